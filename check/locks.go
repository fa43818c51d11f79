package check

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/latchkey/latchkey/client"
)

// margin is kept from a lease's end before a holder makes another fenced
// write: a careful holder stops early, so the workload's own writes stay
// inside its validity and only the paused holder writes past it.
const margin = 300 * time.Millisecond

// lockSession acquires lock j, makes one to three fenced writes to keys it
// protects, renewing once, and releases it.
func (r *run) lockSession(ctx context.Context, c *client.Client, id, j int, rng *rand.Rand, value func() string) {
	name := r.lks[j]
	acq := r.acquire(c, id, name, r.cfg.LeaseTTL, 500*time.Millisecond)
	if acq.Outcome != OK {
		return
	}
	valid := acq.ValidUntil
	keys := r.keysOf(j)
	writes := 1 + rng.IntN(3)
	for w := 0; w < writes && ctx.Err() == nil; w++ {
		if r.rec.now() > valid-margin {
			break
		}
		key := keys[rng.IntN(len(keys))]
		if rng.IntN(5) == 0 {
			r.del(ctx, c, id, key, acq.Token, name)
		} else {
			r.put(ctx, c, id, key, value(), nil, acq.Token, name)
		}
		if w == 0 {
			rn := r.renew(c, id, name, acq.Token, r.cfg.LeaseTTL)
			if rn.Outcome != OK {
				break
			}
			valid = max(valid, rn.ValidUntil)
		}
	}
	r.release(c, id, name, acq.Token)
}

// runSchedule injects and heals the schedule's faults at their times. A
// fault still in effect when the run ends is healed before it returns.
func (r *run) runSchedule(ctx context.Context, s Schedule, paused, successor *client.Client) {
	for i, e := range s.Events {
		select {
		case <-ctx.Done():
			return
		case <-time.After(e.At - r.rec.now()):
		}
		rec := FaultRecord{Fault: e.Fault, Injected: r.rec.now()}
		r.setCurrent(e.Fault.String())
		fmt.Fprintf(r.cfg.Progress, "%6.1fs  inject %s\n", rec.Injected.Seconds(), e.Fault)
		if e.Fault.Kind == KindPauseHolder {
			rec.Note = r.pausedHolder(paused, successor, i, e.Hold)
		} else {
			// Injecting and healing run to completion even when the run
			// ends meanwhile: a deployment must not be left broken.
			ictx, cancel := context.WithTimeout(context.Background(), time.Minute)
			rec.Err = r.cfg.Injector.Inject(ictx, e.Fault)
			cancel()
			if rec.Err == nil {
				select {
				case <-ctx.Done():
				// Held for its full time even when an earlier heal ran
				// late and the fault came late.
				case <-time.After(rec.Injected + e.Hold - r.rec.now()):
				}
			}
			hctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := r.cfg.Injector.Heal(hctx, e.Fault); err != nil && rec.Err == nil {
				rec.Err = fmt.Errorf("heal: %w", err)
			}
			cancel()
		}
		rec.Healed = r.rec.now()
		r.setCurrent("")
		msg := "healed"
		if rec.Err != nil {
			msg = "FAILED: " + rec.Err.Error()
		}
		if rec.Note != "" {
			msg += " (" + rec.Note + ")"
		}
		fmt.Fprintf(r.cfg.Progress, "%6.1fs  %s %s\n", rec.Healed.Seconds(), msg, e.Fault)
		r.faultMu.Lock()
		r.faults = append(r.faults, rec)
		r.faultMu.Unlock()
	}
}

func (r *run) setCurrent(s string) {
	r.faultMu.Lock()
	r.current = s
	r.faultMu.Unlock()
}

// pausedHolder plays a holder that stops renewing past its lease (a GC
// pause, a partition): it acquires a lock with the shortest lease and
// writes a key under it; while it is "paused" a successor acquires the
// lock, writes the same key and releases; then the paused holder wakes and
// tries a fenced put, a fenced delete and a renewal with its old token. All
// of it is recorded, so the checks judge it like any other traffic: the
// stale writes must be refused (409) and the renewal too.
func (r *run) pausedHolder(paused, successor *client.Client, n int, hold time.Duration) string {
	pid, sid := r.cfg.Clients, r.cfg.Clients+1
	j := n % len(r.lks)
	name, key := r.lks[j], r.keysOf(j)[0]
	seq := 0
	value := func(who string) string { seq++; return fmt.Sprintf("%s-%d-%d", who, r.rec.now().Milliseconds(), seq) }
	acq := r.acquire(paused, pid, name, time.Second, 3*time.Second)
	if acq.Outcome != OK {
		return "paused holder could not acquire: " + acq.Reason
	}
	r.put(context.Background(), paused, pid, key, value("paused"), nil, acq.Token, name)
	// The pause: past the lease, plus the second the server may take to
	// notice the expiry.
	time.Sleep(max(acq.ValidUntil-r.rec.now(), 0) + 1200*time.Millisecond + max(hold-2*time.Second, 0))
	next := r.acquire(successor, sid, name, r.cfg.LeaseTTL, 3*time.Second)
	if next.Outcome != OK {
		return "successor could not acquire: " + next.Reason
	}
	w := r.put(context.Background(), successor, sid, key, value("successor"), nil, next.Token, name)
	r.release(successor, sid, name, next.Token)
	stalePut := r.put(context.Background(), paused, pid, key, value("paused-late"), nil, acq.Token, name)
	staleDel := r.del(context.Background(), paused, pid, key, acq.Token, name)
	rn := r.renew(paused, pid, name, acq.Token, time.Second)
	return fmt.Sprintf("token %d paused, successor token %d wrote: %s; late put: %s %s, late delete: %s %s, late renew: %s %s",
		acq.Token, next.Token, w.Outcome, stalePut.Outcome, stalePut.Reason, staleDel.Outcome, staleDel.Reason, rn.Outcome, rn.Reason)
}

// finalReads reads every key linearizably once traffic and faults are over,
// retrying each until it answers (up to a minute in all), for the
// durability check.
func (r *run) finalReads(ctx context.Context, c *client.Client) error {
	deadline := time.Now().Add(time.Minute)
	for _, key := range r.keys {
		for {
			op := r.get(c, r.cfg.Clients+2, key, KindFinalGet)
			if op.Outcome == OK {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("final read of %q: still failing after a minute: %s", key, op.Reason)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}
