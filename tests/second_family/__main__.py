"""`python -m second_family` (from tests/): build the family and print its members."""

from .build import build

family = build()
print(f"{family.path} (built in {family.build_seconds:.1f} s, "
      f"{family.build_cpu_seconds:.1f} s of CPU)")
for member in family.members:
    print(f"{member.name:8} steps {member.alignment_steps:4}  "
          f"validation refusal {member.validation_refusal:.2f}")
