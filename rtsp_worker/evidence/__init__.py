"""Evidence for events: clips around them (remuxed from the packet ring, no re-encoding), the best snapshot
of each track, retention and the disk-full guard. See docs/evidence.md."""

from rtsp_worker.evidence.disk import EvidenceStatus
from rtsp_worker.evidence.manager import Evidence

__all__ = ["Evidence", "EvidenceStatus"]
