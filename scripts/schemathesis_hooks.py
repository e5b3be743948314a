"""Schemathesis hooks of scripts/schemathesis.sh: real ids in sends.

`POST /messages` takes exactly one of `toUserId` and `groupId` (the other
absent or null). A dictionary binding cannot hand those out: it also
replaces a `null`, turning a valid send into one with both. So this hook
swaps only an id that is already a well-formed string for a real one (or
keeps it): a valid case stays valid, an invalid one stays invalid.
"""

import json
import os
import re

import schemathesis
from hypothesis import strategies as st

ID = re.compile(r"[1-9][0-9]{0,18}")

with open(os.environ["HERALD_SCHEMATHESIS_IDS"]) as f:
    REAL = json.load(f)


@schemathesis.hook.apply_to(operation_id="sendMessage")
def flatmap_body(context, body):
    if not isinstance(body, dict):
        return st.just(body)
    # Mostly a real id: a random one is refused with 404 before anything.
    choices = {
        field: st.sampled_from([body[field], *REAL[field] * 4])
        for field in ("toUserId", "groupId")
        if isinstance(body.get(field), str) and ID.fullmatch(body[field])
    }
    if not choices:
        return st.just(body)
    return st.fixed_dictionaries(choices).map(lambda ids: {**body, **ids})
