"""Staff label corrections as training examples (``inbox-bot train --include-corrections``)."""
from __future__ import annotations

from typing import Iterator

from sqlalchemy import select

from .parse import parse
from .store import InboundMessage, LabelCorrection, Store


def corrections_from_store(store: Store) -> Iterator[object]:
    """The latest correction of each case, as a LabelledExample of the inquiry's new text."""
    from .training import LabelledExample
    latest: dict[int, LabelCorrection] = {}
    with store.read_session() as s:
        for corr in s.execute(select(LabelCorrection).order_by(LabelCorrection.id)).scalars():
            latest[corr.case_id] = corr          # a later correction replaces an earlier one
        for corr in latest.values():
            if corr.inbound_id is None:
                continue
            row = s.get(InboundMessage, corr.inbound_id)
            if row is None:
                continue
            msg = parse(row.raw)
            yield LabelledExample(id=f"correction-{corr.id}", lang=corr.language or msg.language,
                                  subject=msg.subject, body=msg.new_text,
                                  labels=tuple(corr.new_labels), html=False)
