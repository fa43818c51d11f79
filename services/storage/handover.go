package storage

import (
	"context"
	"strconv"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// The storage side of a move of the shard set (docs/ARCHITECTURE.md,
// "Resharding"). Two kinds of records decide which keys a shard still
// serves, and both are messages in the shard's own stream, so every
// instance's view applies them in the stream's order:
//
//   - a moved marker on a key (shardfmt.HeaderMovedTo): the mover wrote
//     it conditioned on the sequence it copied, so no write conditioned
//     on an older message can land after it; the shard answers 503
//     moved for the key and the router asks the new owner;
//   - the ownership record ($KV.<bucket>.=owner, a pb.ShardMap): from its
//     sequence on, the shard owns only the keys that hash to it under that
//     set. A key it does not own is served only from a message older than
//     the record (the mover still has to hand it over); no message, or a
//     newer one, is answered moved. A create that lands after the record is
//     found so by the writer's own view (postCheck) and answered 503
//     handover: it may remain in the stream, never served.

// ownerToken is the subject token of the ownership record. It, the moved
// markers' headers and the rest of the stream's format, shared with the
// mover, are kit/shardfmt's.
const ownerToken = shardfmt.OwnerToken

// ownership is an applied ownership record.
type ownership struct {
	seq   uint64
	epoch uint64
	hash  *consistenthash.Map
}

// owns reports whether the record leaves key with shard id.
func (o *ownership) owns(id, key string) bool { return o == nil || o.hash.Get(key) == id }

// parseOwnership reads an ownership record's body.
func parseOwnership(seq uint64, data []byte) (*ownership, bool) {
	m := &pb.ShardMap{}
	if err := proto.Unmarshal(data, m); err != nil || len(m.Shards) == 0 {
		return nil, false
	}
	return &ownership{seq: seq, epoch: m.Epoch, hash: consistenthash.New(m.Shards)}, true
}

// isHandover reports whether a request is a router's retry after moved.
func isHandover(req *service.Request) bool {
	return req != nil && req.Msg != nil && req.Msg.Header.Get(shardfmt.HeaderHandover) != ""
}

func (sh *shard) errMoved(key, to string) error {
	if to == "" {
		return apierr.Unavailable(apierr.ReasonMoved, "shard %s: the key's buckets moved to another shard; retry on its new owner", sh.id)
	}
	return apierr.Unavailable(apierr.ReasonMoved, "shard %s: the key moved to shard %s; retry there", sh.id, to)
}

func (sh *shard) errHandover() error {
	return apierr.Unavailable(apierr.ReasonHandover, "shard %s: the key is being handed over to this shard; retry", sh.id)
}

// verdict decides whether this shard may answer for key whose current
// message is b (seq 0: none), read at a point the view has reached. nil
// means serve b as it is.
func (sh *shard) verdict(key string, b base, handover bool) error {
	if b.moved {
		return sh.errMoved(key, b.movedTo)
	}
	o := sh.view.owner()
	if !o.owns(sh.id, key) && (b.seq == 0 || b.seq > o.seq) {
		return sh.errMoved(key, "")
	}
	// A hand-over request is answered only from the copy or what was
	// written on it: both come after the ownership record the mover wrote
	// here before copying. Anything older (no message, or a tombstone the
	// mover left of an earlier epoch) may be a copy still on its way.
	if handover && (b.seq == 0 || (o != nil && b.seq < o.seq)) {
		return sh.errHandover()
	}
	return nil
}

// settle waits until the view has applied seq, so that verdict sees every
// ownership record before it.
func (sh *shard) settle(ctx context.Context, seq uint64) error {
	if sh.view.appliedSeq() >= seq {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, batchedReadWait)
	defer cancel()
	if err := sh.view.wait(wctx, seq); err != nil {
		return apierr.Unavailable(apierr.ReasonViewBehind, "shard %s: the view did not reach sequence %d in time", sh.id, seq)
	}
	return nil
}

// isOrphan reports whether the message at seq with headers h, applied in
// stream order, is an orphan: the key is not this shard's under the last
// ownership record, the message is newer than the record, and it is a
// create (conditioned on "no message") or a write conditioned on an
// orphan. Such writes were answered 503 (postCheck); they are never
// served, listed or sent as events. (A view loaded from the last message
// per key sees a write on an orphan without the orphan: it is then not
// recognised, but reads and scans still refuse it, see verdict and scan.)
func (sh *shard) isOrphan(key string, seq uint64, h nats.Header) bool {
	o := sh.view.owner()
	if o.owns(sh.id, key) || seq < o.seq {
		return false
	}
	exp := h.Get(hdrExpectSubj)
	if exp == "0" {
		return true
	}
	prev := sh.view.lookup(key)
	return prev.orphan && exp == formatUint(prev.seq)
}

// postCheck runs after a write conditioned on base was stored at seq,
// when the writer's view had not applied base when it judged it (base 0,
// "no message", always counts): an ownership record the view had not seen
// may precede the write. If one disowns key and base is not older than it
// (a create, or a write on a message stored after the record, which may
// be an orphan), the shard may already have handed the key's buckets over
// and the mover's last pass missed this write: it is answered 503 handover
// and stays an orphan nobody serves. A write on a message older than the
// record is safe: the mover's marker for the key is conditioned on it.
func (sh *shard) postCheck(ctx context.Context, key string, base, seq uint64) error {
	if err := sh.settle(ctx, seq); err != nil {
		return err
	}
	if o := sh.view.owner(); !o.owns(sh.id, key) && o.seq < seq && (base == 0 || base > o.seq) {
		return sh.errHandover()
	}
	return nil
}

func formatUint(v uint64) string { return strconv.FormatUint(v, 10) }
