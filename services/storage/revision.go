package storage

import "github.com/latchkey/latchkey/kit/shardfmt"

// Per-key revisions (docs/ARCHITECTURE.md, "Resharding"). How a message's
// headers give its revision is the stream's format, shared with the mover:
// kit/shardfmt (RevInfo) defines it.
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
	hdrRevision       = shardfmt.HeaderRevision
	hdrRevisionOffset = shardfmt.HeaderRevisionOffset
	// floorToken is the subject token of the shard's floor record; like
	// barrierToken it lies outside the key alphabet.
	floorToken = shardfmt.FloorToken
)

// revInfo is what a message's headers say about its revision.
type revInfo = shardfmt.RevInfo

// writeOffset is the revision offset of a write conditioned on cur.
func writeOffset(cur base, floor uint64) uint64 {
	off := floor
	if cur.rev > cur.seq && cur.rev-cur.seq > off {
		off = cur.rev - cur.seq
	}
	return off
}
