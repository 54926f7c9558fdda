"""Wire contracts of the trigger plane: every subject, bucket, message and HTTP body.

Every service and every external publisher imports from here; nothing else names a subject.
Evolution rules: a new field gets a default, a field never changes type, a breaking change gets
a new name (struct or subject).
"""
