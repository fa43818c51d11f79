package storage

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
)

// The TTL guard (docs/CORRECTNESS.md, "TTL instants").
//
// When a TTL'd message runs out, nats-server 2.15 checks that it is still
// its subject's last message and then writes an expiry marker carrying
// Nats-Rollup: sub, which is not conditioned on anything. A write
// conditioned on the expiring message that commits between the check and
// the marker is acknowledged and then purged by the rollup. So a write is
// never conditioned on a TTL'd value that may expire before the write
// commits: when the value's expiry is less than the guard away, the write
// waits for the server's marker and is conditioned on the marker, which
// expires by plain removal and never rolls anything up.
//
// A write sent before the guard but acknowledged so late that the value may
// have expired under it is checked afterwards (swallowed) and, if the
// marker purged it, written again on the marker.

// expiryNanos is jskv.Expiry as unix nanos, 0 for a message that never
// expires.
func expiryNanos(ts time.Time, h nats.Header) int64 {
	if at, ok := jskv.Expiry(ts, h); ok {
		return at.UnixNano()
	}
	return 0
}

// guarded reports whether a write must not be conditioned on cur: a value
// the server expires less than the guard from now (or already should have).
func (sh *shard) guarded(cur base) bool {
	return !sh.unsafe.NoTTLGuard && cur.live && cur.exp != 0 &&
		time.Until(time.Unix(0, cur.exp)) < sh.guard
}

// ackedLate reports whether a write conditioned on cur was acknowledged so
// close to cur's expiry (within the clock allowance) that the server may
// have expired cur before the write committed.
func (sh *shard) ackedLate(cur base) bool {
	return !sh.unsafe.NoTTLGuard && cur.live && cur.exp != 0 &&
		time.Now().Add(clockAllowance).UnixNano() >= cur.exp
}

// awaitExpiry waits until key's last message is no longer cur, which the
// server's expiry marker normally ends, and returns what replaced it. It
// never decides by time alone: the server expires at cur.exp on its clock
// or later (its expiry pass runs at most every 250 ms, and may be late).
// It sleeps until the view applies a newer message of key, and takes that
// as the next base (authoritative false: the write conditioned on it will
// tell); should the view lag, it reads from the leader shortly after
// cur.exp and then every expiryPoll.
func (sh *shard) awaitExpiry(ctx context.Context, key string, cur base) (b base, authoritative bool, err error) {
	expiringWrites.WithLabelValues(sh.id).Inc()
	wait := time.Until(time.Unix(0, cur.exp)) + expiryPoll
	for {
		changed, stop := sh.view.keyChanged(key, cur.seq)
		t := time.NewTimer(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			stop()
			t.Stop()
			return base{}, false, apierr.Errorf(apierr.ReasonExpiryPending,
				"shard %s: the key's previous value is expiring and the server has not written its expiry marker yet; retry", sh.id)
		case <-changed:
			t.Stop()
			return sh.view.guess(key), false, nil
		case <-t.C:
		}
		stop()
		if b, err = sh.leaderRead(ctx, key); err != nil {
			return base{}, false, err
		}
		if b.seq != cur.seq {
			return b, true, nil
		}
		wait = expiryPoll
	}
}

// swallowed checks a write acknowledged late (ackedLate) at revision seq
// on subject: lost is true when the server's expiry marker purged it, and
// marker is then the key's current message. A write still last when a
// quorum commits a barrier conditioned on it was not purged: the marker,
// had it been proposed before the write committed, would precede the
// barrier in the stream and fail its condition.
func (sh *shard) swallowed(ctx context.Context, subject string, seq uint64, sent time.Time) (marker base, lost bool, err error) {
	bseq, err := jskv.ConfirmLast(ctx, sh.js, sh.barrierSubj, subject, seq)
	if err == nil {
		sh.noteAcked(bseq)
		return base{}, false, nil
	}
	if !errors.Is(err, jskv.ErrWrongLastSequence) {
		return base{}, false, unavailable(sh.id, "write confirmation", err)
	}
	m, found, err := jskv.LeaderGet(ctx, sh.nc, sh.stream, subject)
	if err != nil {
		return base{}, false, unavailable(sh.id, "write confirmation", err)
	}
	// Something newer replaced the write. It was lost only if that is an
	// expiry marker, and not the write's own expiry (at least 1 s later).
	if !found || m.Seq <= seq || m.Header.Get(jskv.HeaderMarkerReason) == "" || time.Since(sent) >= time.Second {
		return base{}, false, nil
	}
	expiryLosses.WithLabelValues(sh.id).Inc()
	floor, _ := sh.view.floorAt()
	mb := base{seq: m.Seq, exp: expiryNanos(m.Time, m.Header), marker: shardfmt.IsServerMarker(m.Header)}
	mb.rev = shardfmt.ReadRevInfo(m.Header).Revision(m.Seq, mb.marker, floor)
	return mb, true, nil
}

// confirmedRead is a linearizable read of key without the view: a leader
// read, confirmed by a quorum-committed barrier conditioned on the
// sequence it returned. A stream leader cut off from its quorum keeps
// answering reads for seconds; it cannot commit the barrier, so its
// answer is never returned (503 instead).
//
// It also returns the barrier's sequence: the read point, which the view
// must reach before an absent answer can be checked against ownership.
func (sh *shard) confirmedRead(ctx context.Context, key string) (base, uint64, error) {
	subject := sh.subjPfx + encodeKey(key)
	for range confirmAttempts {
		b, err := sh.leaderRead(ctx, key)
		if err != nil {
			return base{}, 0, err
		}
		pctx, span := telemetry.StartJetStream(ctx, telemetry.JSPublish, sh.stream)
		bseq, err := jskv.ConfirmLast(pctx, sh.js, sh.barrierSubj, subject, b.seq)
		telemetry.End(span, 0, err)
		if err == nil {
			sh.noteAcked(bseq)
			return b, bseq, nil
		}
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return base{}, 0, unavailable(sh.id, "read confirmation", err)
		}
		// The key changed between the read and its confirmation: read again.
	}
	return base{}, 0, apierr.Errorf(apierr.ReasonContention,
		"shard %s: the key changed under %d confirmed reads in a row; retry", sh.id, confirmAttempts)
}
