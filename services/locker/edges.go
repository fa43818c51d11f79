package locker

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/telemetry"
)

// Where a lock's promises meet the server's TTL expiry (docs/CORRECTNESS.md,
// "TTL instants"). When a lease record (or a release marker) runs out,
// nats-server 2.15 checks that it is still the key's last message and then
// writes an unconditioned expiry marker with Nats-Rollup: sub. A write
// conditioned on the expiring message that commits between the two is
// acknowledged and then purged: a renewal would be acked while the lock
// goes free. So no write is conditioned on a message that may expire
// before it commits: renewals inside the guard are refused, acquires on an
// expiring release marker wait for the server to replace it, and a
// renewal acknowledged within the clock allowance of the old expiry is
// confirmed before it is reported.

const (
	// clockAllowance is how far apart the clocks of latchkey hosts and NATS
	// servers may be: expiry instants are on the server's clock.
	clockAllowance = 100 * time.Millisecond
	// expiryPoll is how often an acquire waiting for a marker to expire
	// re-reads; the server's expiry timer ticks every ~250ms.
	expiryPoll = 10 * time.Millisecond
	// confirmAttempts bounds re-reads of a lock that changed between a
	// read and its quorum confirmation.
	confirmAttempts = 4
)

// expiring reports whether the server expires l's message less than the
// guard from now, or should have already.
func (s *Server) expiring(l lease) bool {
	return !l.exp.IsZero() && time.Until(l.exp) < s.guard
}

// ackedLate reports whether a write conditioned on l was acknowledged so
// close to l's expiry that the server may have expired l first.
func ackedLate(l lease) bool {
	return !l.exp.IsZero() && time.Now().Add(clockAllowance).After(l.exp)
}

func renewTooLate(name string, token uint64, l lease, guard time.Duration) error {
	return apierr.Errorf(apierr.ReasonRenewTooLate,
		"renewal of lock %q (token %d) came %v before its lease ends on the server, inside the %v guard; the lease may already be gone: acquire again",
		name, token, time.Until(l.exp).Round(time.Millisecond), guard)
}

// awaitChange waits until name's last message is no longer l's, deciding
// by reading, never by time alone (the server expires at l.exp or later).
func (s *Server) awaitChange(ctx context.Context, name string, l lease) error {
	wait := time.Until(l.exp.Add(-clockAllowance))
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return apierr.Errorf(apierr.ReasonExpiryPending, "lock %q: waiting for the server to expire its release marker; retry", name)
			case <-t.C:
			}
		}
		cur, err := s.read(ctx, name)
		if err != nil {
			return err
		}
		if cur.seq != l.seq {
			return nil
		}
		wait = expiryPoll
	}
}

// confirmRenewal checks a renewal acknowledged late (at sequence seq): if
// the server's expiry marker purged it, the lock is no longer held and the
// renewal is reported as too late. A renewal still last when a quorum
// commits a barrier conditioned on it holds: a marker proposed before the
// renewal committed would precede the barrier and fail its condition.
func (s *Server) confirmRenewal(ctx context.Context, name string, token, seq uint64) error {
	_, err := jskv.ConfirmLast(ctx, s.js, s.barrier, s.subj+jskv.EncodeKey(name), seq)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jskv.ErrWrongLastSequence) {
		return err
	}
	l, err := s.read(ctx, name)
	if err != nil {
		return err
	}
	if l.held && l.record.Token == token {
		return nil // renewed again since, by the same holder
	}
	renewalsLost.Inc()
	return apierr.Errorf(apierr.ReasonRenewTooLate,
		"renewal of lock %q (token %d) landed as its lease expired and the server's expiry removed it; the lock is not held: acquire again", name, token)
}

// confirmedRead reads name from the stream leader and confirms the read
// with a barrier a quorum commits, conditioned on the sequence read: a
// leader cut off from its quorum keeps answering reads for seconds, but
// cannot commit the barrier, so its answer is never returned (503).
//
// A confirmation refused although the key did not move means another
// conditional write on the key is still in flight: nats-server refuses
// conditional writes on a subject while one is pending. That is waited
// out (jskv.WaitInFlight, as renewals do) and, if it lasts, answered 503
// (a leader without a quorum leaves its pending write hanging), never
// 409. A lock that keeps changing between read and confirmation is a 503
// after confirmAttempts changes.
func (s *Server) confirmedRead(ctx context.Context, name string) (lease, error) {
	subject := s.subj + jskv.EncodeKey(name)
	refused, busy := uint64(0), 0
	for changed := 0; changed < confirmAttempts; {
		l, err := s.read(ctx, name)
		if err != nil {
			return lease{}, err
		}
		if refused != 0 && l.seq+1 == refused {
			busy++
			if err := jskv.WaitInFlight(ctx, "lock "+name, busy); err != nil {
				return lease{}, err
			}
		} else if refused != 0 {
			changed++
		}
		cctx, span := telemetry.StartJetStream(ctx, telemetry.JSPublish, s.stream)
		_, err = jskv.ConfirmLast(cctx, s.js, s.barrier, subject, l.seq)
		telemetry.End(span, 0, err)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return lease{}, err
		}
		refused = l.seq + 1 // +1: a lock may be confirmed at sequence 0 too
	}
	return lease{}, apierr.Errorf(apierr.ReasonContention,
		"lock %q changed %d times between a read and its quorum confirmation; retry", name, confirmAttempts)
}
