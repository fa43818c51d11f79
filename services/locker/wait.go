package locker

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// waitQueue holds this instance's waiters for one lock name, in arrival
// order, and the one KV watch they share. Only the head tries to acquire,
// so a release wakes one waiter, not all of them.
type waitQueue struct {
	name    string
	waiters []*waiter     // guarded by Server.mu
	ready   chan struct{} // closed once the watch is set up (or failed)
	stop    func()        // ends the watch; set before ready closes
}

type waiter struct {
	// wake carries a wake-up, with the stream sequence of the marker that
	// freed the lock if known (0 otherwise). Buffered 1 and overwritten,
	// so a pending wake-up is never lost or doubled.
	wake chan uint64
}

// join appends a new waiter to name's queue, creating the queue and its
// watch if this is the first waiter. It never blocks: setting up a watch
// can take as long as JetStream's API timeout, longer than a caller may
// wait. Until the watch is up, waiters re-read on their timers; once it
// is, the head is woken to re-read, so a release that happened before the
// watch could see it is not missed.
func (s *Server) join(name string) (*waitQueue, *waiter) {
	w := &waiter{wake: make(chan uint64, 1)}
	s.mu.Lock()
	q, ok := s.queues[name]
	if !ok {
		q = &waitQueue{name: name, ready: make(chan struct{})}
		s.queues[name] = q
	}
	q.waiters = append(q.waiters, w)
	s.mu.Unlock()
	if !ok {
		go func() {
			q.stop = s.watch(q)
			close(q.ready)
			s.wakeHead(q, 0)
		}()
	}
	return q, w
}

// leave removes w. If w was the head, the new head is woken: it tries
// once (the lock may be free if w gave up) and, finding it held, arms its
// timer from the holder's lease, so a missed watch event costs at most a
// lease and not the whole wait. The last waiter to leave ends the watch.
func (s *Server) leave(q *waitQueue, w *waiter) {
	s.mu.Lock()
	wasHead := len(q.waiters) > 0 && q.waiters[0] == w
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			break
		}
	}
	empty := len(q.waiters) == 0
	if empty {
		delete(s.queues, q.name)
	} else if wasHead {
		notify(q.waiters[0], 0)
	}
	s.mu.Unlock()
	if empty {
		// The watch may still be being set up; end it once it is, without
		// holding up this waiter's reply.
		select {
		case <-q.ready:
			q.stop()
		default:
			go func() { <-q.ready; q.stop() }()
		}
	}
}

func (s *Server) isHead(q *waitQueue, w *waiter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(q.waiters) > 0 && q.waiters[0] == w
}

func (s *Server) wakeHead(q *waitQueue, markerSeq uint64) {
	s.mu.Lock()
	if len(q.waiters) > 0 {
		notify(q.waiters[0], markerSeq)
	}
	s.mu.Unlock()
}

// notify is called with Server.mu held, so it is the only sender.
func notify(w *waiter, markerSeq uint64) {
	select {
	case <-w.wake: // replace an unconsumed wake-up with the newer one
	default:
	}
	w.wake <- markerSeq
}

// watch follows name's key and wakes the head waiter whenever the lock may
// have become free (a delete, purge or expiry marker). If the watch cannot
// be set up, waiters still re-read on their timers.
func (s *Server) watch(q *waitQueue) func() {
	ctx, cancel := context.WithCancel(s.ctx)
	kw, err := s.kv.Watch(ctx, jskv.EncodeKey(q.name), jetstream.UpdatesOnly())
	if err != nil {
		s.log.Warn("lock watch failed; waiters fall back to timed re-reads", "lock", q.name, "err", err)
		return cancel
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-kw.Updates():
				if !ok {
					return
				}
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					// A purge here is the server's expiry marker (a
					// release is a delete): the holder stopped renewing.
					if e.Operation() == jetstream.KeyValuePurge {
						expiries.Inc()
					}
					s.wakeHead(q, e.Revision())
				}
			}
		}
	}()
	return func() {
		cancel()
		_ = kw.Stop()
	}
}

// staleReadRetry is the first wait before a head waiter reads again after
// a leader answered older than what the instance had seen; it doubles up
// to recheckSlack.
const staleReadRetry = 20 * time.Millisecond

// acquireWait queues for the lock until it is acquired or wait_ms passed.
func (s *Server) acquireWait(ctx context.Context, in *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	deadline := time.Now().Add(time.Duration(in.WaitMs) * time.Millisecond)
	if dl, ok := ctx.Deadline(); ok && dl.Add(-replyMargin).Before(deadline) {
		deadline = dl.Add(-replyMargin)
	}
	// Every step below, JetStream calls included, ends by deadline, so the
	// caller hears the outcome (409, or 503 when JetStream is slow) before
	// it stops listening.
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	markWaited(ctx)
	waiters.Inc()
	defer waiters.Dec()
	q, w := s.join(in.Name)
	defer s.leave(q, w)

	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	var (
		last    lease
		lastErr error
	)
	var hint, carry uint64
	staleWait := staleReadRetry
	for {
		next := deadline
		if s.isHead(q, w) {
			resp, l, err := s.tryAcquire(ctx, in, hint)
			transient := errors.Is(err, apierr.ErrConflict) || errors.Is(err, apierr.ErrUnavailable)
			if err != nil && !transient {
				return nil, err
			}
			if resp != nil {
				return resp, nil
			}
			last, lastErr = l, err
			carry = 0
			seen := max(hint, s.view.newest(jskv.EncodeKey(in.Name)))
			switch {
			case err == nil && l.seq < seen:
				// The leader answered with a message older than one this
				// instance has seen (the marker that woke it, or one its
				// view holds): seen on a loaded 3-node cluster, where a
				// woken head read the record from before the release
				// that woke it. The lock may be free; sleeping for the
				// lease the stale read shows would leave it idle that
				// long (a 3-node bench stalled so for 10 s per hand-off).
				// Look again soon, from the same marker.
				carry = hint
				if t := time.Now().Add(staleWait); t.Before(next) {
					next = t
				}
				staleWait = min(2*staleWait, recheckSlack)
			case err == nil:
				staleWait = staleReadRetry
				if t := time.Now().Add(l.remaining(time.Now()) + recheckSlack); t.Before(next) {
					next = t
				}
			default:
				if t := time.Now().Add(recheckSlack); t.Before(next) {
					// Lost several CAS races, or JetStream is failing
					// over: look again soon.
					next = t
				}
			}
		}
		if !time.Now().Before(deadline) {
			return nil, waitExpired(in, last, lastErr)
		}
		// Go 1.23+ timers: Reset discards a pending expiry, no drain needed.
		timer.Reset(max(time.Until(next), 0))
		hint = carry
		select {
		case hint = <-w.wake:
		case <-timer.C:
		case <-s.ctx.Done():
			return nil, apierr.Errorf(apierr.ReasonShuttingDown, "locker is stopping; retry the acquire")
		case <-ctx.Done():
			if parent.Err() != nil {
				return nil, parent.Err()
			}
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			// Our own deadline: no time is left for an attempt to finish.
			return nil, waitExpired(in, last, lastErr)
		}
	}
}

// waitExpired is the answer of a wait that ran out: what the last attempt
// saw (a 503 if JetStream failed it), else a 409.
func waitExpired(in *pb.AcquireRequest, last lease, lastErr error) error {
	if errors.Is(lastErr, apierr.ErrUnavailable) {
		return lastErr
	}
	if last.held {
		return heldError(in.Name, last)
	}
	return apierr.Errorf(apierr.ReasonLockHeld, "lock %q was not free within wait_ms %d", in.Name, in.WaitMs)
}
