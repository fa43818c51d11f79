package check

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/latchkey/latchkey/client"
)

// TTL keys are written by one client only, one operation at a time, so
// their check needs no search: after a put with ttl_ms, the key must be
// there until ttl_ms after the put was invoked (the server removes it
// "after that time", rounding up, never down), and gone some time after
// ttl_ms rounded up to whole seconds past the put's acknowledgement. The
// upper bound is generous (ttlSlack) because expiry runs on a timer of the
// NATS server and the machine may be busy.
const (
	ttlKeys  = 2
	ttlSlack = 5 * time.Second
	// ttlHealSlack is how long after a fault heals the server may still
	// not have expired a value whose expiry fell inside the fault. Only a
	// stream leader expires messages, so nothing expires while the stream
	// has none (every server killed, the leader paused or cut off), and a
	// new one runs its first pass a moment after it is elected: after a
	// restart of all three servers healed at 6.1 s, a value due at 2.3 s
	// was still read at 12.1 s and gone at 13.9 s (seed 3). The API does
	// not promise how soon after its TTL a value goes.
	ttlHealSlack = 10 * time.Second
)

// expiresBy is when the value written by p (a put with ttl_ms that may
// have happened) must be gone, unless overwritten: ttlSlack after its
// rounded TTL ran out, or ttlHealSlack after the heal of every fault that
// overlapped that wait.
func expiresBy(p Op, faults []FaultRecord) time.Duration {
	from, by := p.Call+ceilSecond(p.TTL), p.Return+ceilSecond(p.TTL)+ttlSlack
	for _, f := range faults { // in the order they happened
		if f.Injected < by && f.Healed > from && f.Healed+ttlHealSlack > by {
			by = f.Healed + ttlHealSlack
		}
	}
	return by
}

func (r *run) ttlKey(i int) string { return fmt.Sprintf("%st%d", r.cfg.Namespace, i) }

// ttlWorker puts values with a TTL of 1-2.5s and reads them back at random
// times from just after the put until well after their expiry.
func (r *run) ttlWorker(ctx context.Context, c *client.Client) {
	id := r.cfg.Clients + 2
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0x771))
	n := 0
	for ctx.Err() == nil {
		n++
		key := r.ttlKey(n % ttlKeys)
		ttl := time.Second + time.Duration(rng.IntN(6))*250*time.Millisecond
		op := Op{Client: id, Kind: KindTTLPut, Key: key, Value: fmt.Sprintf("ttl-%d", n), TTL: ttl}
		octx, cancel := r.opCtx()
		op.Call = r.rec.now()
		rev, err := c.Put(octx, key, []byte(op.Value), client.WithTTL(ttl))
		op.Return = r.rec.now()
		cancel()
		op.Rev, op.Outcome, op.Reason, op.Invalid = rev, classify(err), reason(err), invalid(err)
		r.record(op)
		// Reads until a while after the expiry; the next put (another
		// key, then this one again) comes after that.
		until := op.Return + ttl.Round(time.Second) + 2*time.Second
		for ctx.Err() == nil && r.rec.now() < until {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(100+rng.IntN(400)) * time.Millisecond):
			}
			g := Op{Client: id, Kind: KindTTLGet, Key: key}
			gctx, cancel := r.opCtx()
			g.Call = r.rec.now()
			e, err := c.Get(gctx, key)
			g.Return = r.rec.now()
			cancel()
			switch {
			case err == nil:
				g.Found, g.Result, g.Rev = true, string(e.Value), e.Revision
			case errors.Is(err, client.ErrNotFound):
			default:
				g.Outcome, g.Reason = Unknown, reason(err)
			}
			r.record(g)
		}
	}
}

// checkTTL checks the TTL keys' histories (see ttlKeys).
func checkTTL(ops []Op, faults []FaultRecord) []Violation {
	var vs []Violation
	last := map[string]Op{} // the latest TTL put per key, in history order
	for _, op := range ops {
		switch op.Kind {
		case KindTTLPut:
			last[op.Key] = op
		case KindTTLGet:
			p, ok := last[op.Key]
			if op.Outcome != OK || !ok || p.Outcome == Failed {
				continue
			}
			if p.Outcome == Unknown {
				delete(last, op.Key) // nothing definite to hold the key to
				continue
			}
			expiresBy := expiresBy(p, faults)
			switch {
			case !op.Found && op.Return < p.Call+p.TTL:
				vs = append(vs, Violation{CheckTTL, fmt.Sprintf("key %q was gone at %s, before its ttl of %s from the put at %s had run out",
					op.Key, at(op), p.TTL, at(p))})
			case op.Found && op.Result != p.Value:
				vs = append(vs, Violation{CheckTTL, fmt.Sprintf("key %q held %q at %s; its only writer had put %q at %s", op.Key, op.Result, at(op), p.Value, at(p))})
			case op.Found && op.Call > expiresBy:
				vs = append(vs, Violation{CheckTTL, fmt.Sprintf("key %q still held %q at %s, %s after its put at %s with ttl %s",
					op.Key, op.Result, at(op), (op.Call - p.Return).Round(time.Millisecond), at(p), p.TTL)})
			}
		}
	}
	return vs
}

func ceilSecond(d time.Duration) time.Duration {
	if r := d % time.Second; r != 0 {
		return d - r + time.Second
	}
	return d
}
