package tests

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/nats-io/nats.go"
)

// leaseTTL is the lease of these tests and doneSlack how long after
// Expires a closed Done may be observed: timer and goroutine scheduling on
// a busy 2-core box (266 ms seen under a load of 27), not a renewal's
// timeout. The bug this guards against was up to leaseTTL/3 (2 s) late.
const (
	leaseTTL  = 6 * time.Second
	doneSlack = 700 * time.Millisecond
)

// renewGate relays the lock endpoints from prefix "held" to the real
// locker under "latchkey", and can swallow renewals: they then stay in
// flight, unanswered, as with a locker that hangs or a reply lost on the
// way back.
type renewGate struct {
	hole      atomic.Bool
	mu        sync.Mutex
	swallowed []time.Time // when each swallowed renewal arrived
}

func startRenewGate(t *testing.T, nc *nats.Conn) *renewGate {
	t.Helper()
	g := &renewGate{}
	sub, err := nc.Subscribe("held.lock.*", func(m *nats.Msg) {
		ep := strings.TrimPrefix(m.Subject, "held.")
		if ep == "lock.renew" && g.hole.Load() {
			g.mu.Lock()
			g.swallowed = append(g.swallowed, time.Now())
			g.mu.Unlock()
			return
		}
		// Forward off the subscription's goroutine: a waiting acquire
		// must not hold up the renewals behind it.
		go func() {
			resp, err := nc.RequestMsg(&nats.Msg{Subject: "latchkey." + ep, Header: m.Header, Data: m.Data}, 10*time.Second)
			if err == nil {
				_ = m.RespondMsg(&nats.Msg{Header: resp.Header, Data: resp.Data})
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return g
}

func (g *renewGate) firstSwallowed() (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.swallowed) == 0 {
		return time.Time{}, false
	}
	return g.swallowed[0], true
}

func startLocker(t *testing.T, nc *nats.Conn) *locker.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lk, err := locker.Start(ctx, nc, locker.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return lk
}

// waitRenewed waits until the keep-alive has moved the lease end at least
// once, so the lock is known to renew before the test breaks renewal.
func waitRenewed(t *testing.T, l *client.Lock) {
	t.Helper()
	first := l.Expires()
	eventually(t, leaseTTL, func() error {
		if !l.Expires().After(first) {
			return errors.New("no renewal yet")
		}
		return nil
	})
}

// waitDone returns when Done was seen closed, failing after within.
func waitDone(t *testing.T, l *client.Lock, within time.Duration) time.Time {
	t.Helper()
	select {
	case <-l.Done():
		return time.Now()
	case <-time.After(within):
		t.Fatalf("Done still open %s after the lease end %s", time.Until(l.Expires()).Abs(), l.Expires().Format("15:04:05.000"))
		return time.Time{}
	}
}

// TestLockDoneAtLeaseEndWhileRenewalHangs: a renewal sent before the
// lease ended and never answered must not keep Done open past Expires
// (it used to, by up to a third of the TTL: the renewal's own timeout).
// Done closes before anyone else can take the lock over.
func TestLockDoneAtLeaseEndWhileRenewalHangs(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	lk := startLocker(t, nc)
	t.Cleanup(func() { _ = lk.Stop(context.Background()) })
	gate := startRenewGate(t, natstest.Connect(t, srv.ClientURL()))
	ctx := testCtx(t)

	holder := client.New(natstest.Connect(t, srv.ClientURL()), client.WithPrefix("held"))
	l, err := holder.Acquire(ctx, "hang", client.WithOwner("holder"), client.WithLeaseTTL(leaseTTL))
	if err != nil {
		t.Fatal(err)
	}
	waitRenewed(t, l)
	gate.hole.Store(true)

	doneAt := waitDone(t, l, 2*leaseTTL)
	end := l.Expires()
	swallowedAt, ok := gate.firstSwallowed()
	if !ok || !swallowedAt.Before(end) {
		t.Fatalf("no renewal was in flight when the lease ended (swallowed %v at %s, lease end %s)", ok, swallowedAt, end)
	}
	if doneAt.Before(end) {
		t.Fatalf("Done closed %s before the lease end", end.Sub(doneAt))
	}
	if late := doneAt.Sub(end); late > doneSlack {
		t.Fatalf("Done closed %s after the lease end, with a renewal in flight", late)
	}
	if !errors.Is(l.Err(), client.ErrLockLost) {
		t.Fatalf("Err = %v, want ErrLockLost", l.Err())
	}

	// The locker frees the lock only at its own (later) expiry: whoever
	// takes it over gets it after the old holder's Done closed.
	taker := client.New(natstest.Connect(t, srv.ClientURL()))
	l2, err := taker.Acquire(ctx, "hang", client.WithOwner("taker"), client.WithLeaseTTL(leaseTTL), client.WithWait(2*leaseTTL))
	if err != nil {
		t.Fatal(err)
	}
	tookAt := time.Now()
	defer l2.Release(ctx)
	if tookAt.Before(doneAt) || l2.Token() <= l.Token() {
		t.Fatalf("taker got token %d at %s, holder's Done (token %d) closed at %s", l2.Token(), tookAt, l.Token(), doneAt)
	}
	t.Logf("renewal swallowed %s before the lease end; Done %s after it; taken over %s after Done",
		end.Sub(swallowedAt), doneAt.Sub(end), tookAt.Sub(doneAt))
}

// TestLockDoneAtLeaseEndWhenLockerStops: with no locker to renew at,
// Done closes at Expires, and at that instant the locker's own lease (as
// lock.get reports it once a locker is back) has not ended before the
// client's estimate: the client gives up first.
func TestLockDoneAtLeaseEndWhenLockerStops(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	lk := startLocker(t, nc)
	ctx := testCtx(t)

	c := client.New(natstest.Connect(t, srv.ClientURL()))
	l, err := c.Acquire(ctx, "stop", client.WithLeaseTTL(leaseTTL))
	if err != nil {
		t.Fatal(err)
	}
	waitRenewed(t, l)
	if err := lk.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	doneAt := waitDone(t, l, 2*leaseTTL)
	end := l.Expires()
	if doneAt.Before(end) {
		t.Fatalf("Done closed %s before the lease end", end.Sub(doneAt))
	}
	if late := doneAt.Sub(end); late > doneSlack {
		t.Fatalf("Done closed %s after the lease end", late)
	}
	if !errors.Is(l.Err(), client.ErrLockLost) {
		t.Fatalf("Err = %v, want ErrLockLost", l.Err())
	}

	lk2 := startLocker(t, nc)
	t.Cleanup(func() { _ = lk2.Stop(context.Background()) })
	asked := time.Now()
	st, err := c.LockInfo(ctx, "stop")
	if err != nil {
		t.Fatal(err)
	}
	// Held still is fine (the server's expiry is coarser and later), but
	// then the server's lease must not end before the client's estimate.
	if st.Held {
		if st.Token != l.Token() {
			t.Fatalf("lock.get = %+v, want token %d or not held", st, l.Token())
		}
		if serverEnd := asked.Add(st.TTLRemaining); serverEnd.Before(end.Add(-50 * time.Millisecond)) {
			t.Fatalf("server lease ends %s before the client's Expires", end.Sub(serverEnd))
		}
	}
	if !time.Now().After(end) {
		t.Fatal("Done closed, yet the client's Expires is still ahead")
	}
	t.Logf("Done %s after the lease end; lock.get then: held=%v ttl_remaining=%s", doneAt.Sub(end), st.Held, st.TTLRemaining)
}
