package storage

import (
	"strconv"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/nats-io/nats.go"
)

// Per-key revisions (docs/ARCHITECTURE.md, "Resharding"). A revision is
// the key's own and travels with it when it moves between shards, so it
// cannot simply be the stream sequence of the message that holds it: two
// shards' sequences overlap, and a copied key would get a new, unrelated
// one.
//
// A message's revision is, in order of precedence:
//   - hdrRevision (an absolute revision: a key copied from another shard
//     keeps the revision it had there);
//   - its sequence plus hdrRevisionOffset;
//   - its sequence (every message written before per-key revisions, and
//     every write on a shard no move ever touched: the offset is 0 then and
//     the header is left out, so revisions are what they always were).
//
// A write of a key whose current message is cur takes the offset
// max(floor, cur.rev-cur.seq): its sequence is above cur.seq, so its
// revision is above cur.rev whatever this instance's memory holds. The
// floor is the shard's durable lower bound ($KV.<bucket>.=floor, raised by
// the mover above every revision it imports); it covers the messages that
// carry no revision of their own, the server's expiry markers: a write on a
// marker uses a floor its view applied at or after the marker, which is at
// least the offset of the value the marker expired.
const (
	hdrRevision       = "Latchkey-Revision"
	hdrRevisionOffset = "Latchkey-Revision-Offset"
	// floorToken is the subject token of the shard's floor record; like
	// barrierToken it lies outside the key alphabet.
	floorToken = "=floor"
)

// revInfo is what a message's headers say about its revision.
type revInfo struct {
	abs    uint64 // hdrRevision; 0 = absent
	off    uint64 // hdrRevisionOffset
	hasOff bool
}

func readRevInfo(h nats.Header) revInfo {
	var ri revInfo
	if h == nil {
		return ri
	}
	if v := h.Get(hdrRevision); v != "" {
		ri.abs, _ = strconv.ParseUint(v, 10, 64)
	}
	if v := h.Get(hdrRevisionOffset); v != "" {
		if off, err := strconv.ParseUint(v, 10, 64); err == nil {
			ri.off, ri.hasOff = off, true
		}
	}
	return ri
}

// revision is the revision of the message at seq with ri; floor is the
// shard floor as applied at that point, used only for the server's own
// markers (which carry no header): their revision is a bound for the next
// write, never shown to a client as a value's.
func (ri revInfo) revision(seq uint64, serverMarker bool, floor uint64) uint64 {
	switch {
	case ri.abs != 0:
		return ri.abs
	case ri.hasOff:
		return seq + ri.off
	case serverMarker:
		return seq + floor
	}
	return seq
}

// isServerMarker reports a marker the server wrote itself (a TTL expiry).
func isServerMarker(h nats.Header) bool {
	return h != nil && h.Get(jskv.HeaderMarkerReason) != ""
}

// writeOffset is the revision offset of a write conditioned on cur.
func writeOffset(cur base, floor uint64) uint64 {
	off := floor
	if cur.rev > cur.seq && cur.rev-cur.seq > off {
		off = cur.rev - cur.seq
	}
	return off
}

// parseFloor reads a floor record's body (a decimal number).
func parseFloor(data []byte) (uint64, bool) {
	f, err := strconv.ParseUint(string(data), 10, 64)
	return f, err == nil
}
