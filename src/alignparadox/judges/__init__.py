"""Judges: (request, answer) -> Verdict. One interface (`base.Judge`), several kinds
(`substring`, `strongreject`, `classifier`, `ensemble`), a verdict cache (`cache.CachedJudge`),
spec strings (`registry.make_judge`) and validation against human labels (`validation`)."""
