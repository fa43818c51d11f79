package storage

import (
	"context"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
)

// sync waits until the view has applied every message acknowledged before
// sync was called, and shows every key as of then (waitCut).
func (sh *shard) sync(ctx context.Context) error {
	seq, err := sh.barrier.get(ctx)
	if err != nil {
		return err
	}
	if err := sh.view.waitCut(ctx, seq); err != nil {
		select { // let the monitor find out why, now rather than later
		case sh.kick <- struct{}{}:
		default:
		}
		return apierr.Errorf(apierr.ReasonViewBehind, "shard %s: the view did not catch up with the stream in time", sh.id)
	}
	return nil
}

// syncRetrying is sync for start-up: a stream created a moment ago may not
// have elected its leader yet ("no response from stream"), so failures are
// retried with backoff until ctx ends. The monitor does not run yet, so
// each attempt is bounded here: an attempt in which the view applied
// nothing restarts its consumer from where it stopped (ordered consumers
// have been seen not to resume), and every attempt publishes a fresh
// barrier, whose delivery with nothing pending makes the view a cut again
// after a gap (a start-up ctx without a deadline hung on one barrier).
func (sh *shard) syncRetrying(ctx context.Context) error {
	for wait := 50 * time.Millisecond; ; wait = min(wait*2, time.Second) {
		before := sh.view.appliedSeq()
		actx, cancel := context.WithTimeout(ctx, startSyncAttempt)
		err := sh.sync(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && actx.Err() != nil && sh.view.appliedSeq() == before {
			applied := sh.view.appliedSeq()
			sh.log.Warn("view applied nothing while loading; restarting its consumer", "applied", applied)
			rctx, rcancel := context.WithTimeout(ctx, probeTimeout)
			if rerr := sh.startConsumer(rctx, applied+1); rerr != nil {
				sh.log.Warn("view consumer restart failed", "err", rerr)
			}
			rcancel()
		}
		sh.log.Warn("view not loaded yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

func (sh *shard) publishBarrier(ctx context.Context) (uint64, error) {
	ack, err := sh.js.PublishMsg(ctx, &nats.Msg{Subject: sh.barrierSubj})
	if err != nil {
		return 0, unavailable(sh.id, "barrier", err)
	}
	sh.noteAcked(ack.Sequence)
	return ack.Sequence, nil
}

// noteAcked records that the stream holds seq, which the view must reach.
// When the view had caught up with everything acknowledged before, a new
// wait for it starts now (pendingSince).
func (sh *shard) noteAcked(seq uint64) {
	for {
		cur := sh.acked.Load()
		if seq <= cur {
			return
		}
		if sh.view.appliedSeq() >= cur {
			sh.pendingSince.Store(time.Now().UnixNano())
		}
		if sh.acked.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// barrier hands out stream sequences that were assigned after the caller
// arrived. Callers arriving while a barrier message is in flight share the
// next one, so a burst of scans costs one publish per round trip.
type barrier struct {
	publish func(context.Context) (uint64, error)
	mu      sync.Mutex
	next    *flight
	running bool
}

type flight struct {
	done chan struct{}
	seq  uint64
	err  error
}

// busy reports whether a barrier publish is in flight, so that one more
// caller would share the next publish with others.
func (b *barrier) busy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running
}

func (b *barrier) get(ctx context.Context) (uint64, error) {
	b.mu.Lock()
	if b.next == nil {
		b.next = &flight{done: make(chan struct{})}
	}
	f := b.next
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case <-f.done:
		return f.seq, f.err
	case <-ctx.Done():
		return 0, apierr.Errorf(apierr.ReasonTimeout, "barrier not acknowledged in time")
	}
}

func (b *barrier) run() {
	for {
		b.mu.Lock()
		f := b.next
		b.next = nil
		if f == nil {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		f.seq, f.err = b.publish(ctx)
		cancel()
		close(f.done)
	}
}

// leaderRead returns the key's current message as the stream leader has
// it. Direct gets are not used: followers may answer them with stale data.
// While the stream has no leader (no responders, timeouts, 503s) the read
// is retried until ctx ends: a read changes nothing.
func (sh *shard) leaderRead(ctx context.Context, key string) (base, error) {
	subject := sh.subjPfx + encodeKey(key)
	for wait := 25 * time.Millisecond; ; wait = min(wait*2, 500*time.Millisecond) {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		actx, span := telemetry.StartJetStream(actx, telemetry.JSGet, sh.stream)
		m, found, err := jskv.LeaderGet(actx, sh.nc, sh.stream, subject)
		if found {
			span.SetAttributes(telemetry.AttrRevision.Int64(int64(m.Seq)))
		}
		telemetry.End(span, 0, err)
		cancel()
		switch {
		case err == nil && !found:
			return base{}, nil
		case err == nil:
			b := base{seq: m.Seq, exp: expiryNanos(m.Time, m.Header), live: isLive(m.Header), fences: m.Header.Get(hdrFences), writeID: m.Header.Get(hdrWriteID)}
			b.after = m.Header.Get(hdrExpectSubj)
			b.marker = shardfmt.IsServerMarker(m.Header)
			if b.movedTo = shardfmt.MovedTo(m.Header); b.movedTo != "" {
				b.moved, b.live, b.value = true, false, nil
			}
			floor, _ := sh.view.floorAt()
			b.rev = shardfmt.ReadRevInfo(m.Header).Revision(m.Seq, b.marker, floor)
			if b.live {
				b.value = m.Data
			}
			return b, nil
		}
		select {
		case <-ctx.Done():
			return base{}, unavailable(sh.id, "leader read", err)
		case <-time.After(wait):
		}
	}
}
