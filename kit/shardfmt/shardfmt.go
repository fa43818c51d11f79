// Package shardfmt is the on-stream contract between storage and the mover
// (services/router's resharding): the headers and reserved subject tokens
// of a shard's stream that both sides read or write, and how a message's
// revision and the shard's floor are read from them. It is the one place
// that format is defined, so that neither service module imports the
// other; changing anything here changes what is stored, and a deployment
// mixing versions must agree on it (docs/ARCHITECTURE.md, "Resharding").
package shardfmt

import (
	"strconv"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/nats-io/nats.go"
)

// Headers of the messages in a shard's stream.
const (
	// HeaderRevision is a message's absolute revision: a key copied from
	// another shard keeps the revision it had there (see RevInfo).
	HeaderRevision = "Latchkey-Revision"
	// HeaderRevisionOffset is added to a message's sequence to give its
	// revision (see RevInfo).
	HeaderRevisionOffset = "Latchkey-Revision-Offset"
	// HeaderFences is a key's fence set (base64 of a pb.FenceSet).
	HeaderFences = "Latchkey-Fences"
	// HeaderMovedTo names the shard a key was handed to: the message is a
	// moved marker. The marker also carries the key's revision
	// (HeaderRevision), fences, and, so that a resumed mover can finish the
	// copy, the value (body), HeaderMovedLive and HeaderMovedExpires.
	HeaderMovedTo = "Latchkey-Moved-To"
	// HeaderMovedLive is "1" when the moved key held a value (not a
	// tombstone).
	HeaderMovedLive = "Latchkey-Moved-Live"
	// HeaderMovedExpires is the unix ms at which the server would have
	// expired the moved value; the copy's TTL is what remains of it.
	HeaderMovedExpires = "Latchkey-Moved-Expires"
	// HeaderMoveTombstone marks a tombstone the mover writes on a shard
	// about to receive a key, over what an earlier epoch left there (a
	// moved marker, an orphan): it changes no key, so watches emit no
	// event for it, as for markers and copies (HeaderRevision).
	HeaderMoveTombstone = "Latchkey-Move-Tombstone"
)

// Headers of shard requests from routers.
const (
	// HeaderHandover on a shard request says that the key's previous
	// owner answered moved: the receiving shard must not take "no message"
	// for "absent", since the copy may not have landed yet.
	HeaderHandover = "Latchkey-Handover"
	// HeaderEpoch carries the epoch of the sender's shard map.
	HeaderEpoch = "Latchkey-Epoch"
	// HeaderScanHandedOver on a scan asks the shard to also name, in its
	// page's handed_over, the keys it handed over and no longer serves
	// (a router scanning during a move finds those on their new shard).
	// Routers send it only while a move is running or being undone: old
	// markers would otherwise fill every page.
	HeaderScanHandedOver = "Latchkey-Scan-Handed-Over"
)

// Reserved last subject tokens of records in a shard's bucket; they lie
// outside the key alphabet, so no key collides with them.
const (
	// FloorToken is the token of the shard's floor record: a decimal
	// lower bound for the revisions of messages that carry none of their
	// own (see RevInfo, ParseFloor); the mover raises it above every
	// revision it imports.
	FloorToken = "=floor"
	// OwnerToken is the token of the ownership record (a pb.ShardMap):
	// from its sequence on, the shard owns only the keys that hash to it.
	OwnerToken = "=owner"
)

// RevInfo is what a message's headers say about its revision. A revision
// is the key's own and travels with it when it moves between shards, so
// it cannot simply be the stream sequence of the message that holds it:
// two shards' sequences overlap, and a copied key would get a new,
// unrelated one. A message's revision is, in order of precedence:
//   - HeaderRevision (an absolute revision: a key copied from another
//     shard keeps the revision it had there);
//   - its sequence plus HeaderRevisionOffset;
//   - for the server's own markers (a TTL expiry), its sequence plus the
//     shard's floor;
//   - its sequence (every message written before per-key revisions, and
//     every write on a shard no move ever touched: the offset is 0 then
//     and the header is left out, so revisions are what they always
//     were).
type RevInfo struct {
	abs    uint64 // HeaderRevision; 0 = absent
	off    uint64 // HeaderRevisionOffset
	hasOff bool
}

// ReadRevInfo reads the revision headers of h (nil: none).
func ReadRevInfo(h nats.Header) RevInfo {
	var ri RevInfo
	if h == nil {
		return ri
	}
	if v := h.Get(HeaderRevision); v != "" {
		ri.abs, _ = strconv.ParseUint(v, 10, 64)
	}
	if v := h.Get(HeaderRevisionOffset); v != "" {
		if off, err := strconv.ParseUint(v, 10, 64); err == nil {
			ri.off, ri.hasOff = off, true
		}
	}
	return ri
}

// Revision is the revision of the message at seq with ri; floor is the
// shard floor as applied at that point, used only for the server's own
// markers (which carry no header): their revision is a bound for the next
// write, never shown to a client as a value's.
func (ri RevInfo) Revision(seq uint64, serverMarker bool, floor uint64) uint64 {
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

// IsServerMarker reports a marker the server wrote itself (a TTL expiry).
func IsServerMarker(h nats.Header) bool {
	return h != nil && h.Get(jskv.HeaderMarkerReason) != ""
}

// MessageRevision is the revision of a stored shard message at seq with
// headers h, given the shard's floor; the mover copies it.
func MessageRevision(seq uint64, h nats.Header, floor uint64) uint64 {
	return ReadRevInfo(h).Revision(seq, IsServerMarker(h), floor)
}

// MovedTo returns the shard a moved marker names, "" for other messages.
func MovedTo(h nats.Header) string {
	if h == nil {
		return ""
	}
	return h.Get(HeaderMovedTo)
}

// ParseFloor reads a floor record's body (a decimal number).
func ParseFloor(data []byte) (uint64, bool) {
	f, err := strconv.ParseUint(string(data), 10, 64)
	return f, err == nil
}
