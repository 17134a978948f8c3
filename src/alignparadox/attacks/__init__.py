"""Attacks on targets, one folder per incarnation of the alignment paradox: model, input and
output tinkering. Each attack module also registers its measurement for studies."""
