package locker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

var quiet = slog.New(slog.DiscardHandler)

func startLocker(t testing.TB, nc *nats.Conn, replicas int) *locker.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := locker.Start(ctx, nc, locker.Config{Replicas: replicas, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	return s
}

// lk calls the lock endpoints as an outside client would.
type lk struct {
	t   testing.TB
	nc  *nats.Conn
	set subjects.Set // zero: the default prefix
}

var set = subjects.New("")

func (l lk) call(endpoint string, req, resp proto.Message, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s := l.set
	if s.Prefix == "" {
		s = set
	}
	return service.Call(ctx, l.nc, s.Public(endpoint), nil, req, resp)
}

func (l lk) acquire(name, owner string, ttlMs, waitMs int64) (*pb.AcquireResponse, error) {
	resp := &pb.AcquireResponse{}
	err := l.call(subjects.LockAcquire, &pb.AcquireRequest{Name: name, Owner: owner, TtlMs: ttlMs, WaitMs: waitMs}, resp,
		time.Duration(waitMs)*time.Millisecond+5*time.Second)
	return resp, err
}

func (l lk) mustAcquire(name, owner string, ttlMs int64) uint64 {
	l.t.Helper()
	r, err := l.acquire(name, owner, ttlMs, 0)
	if err != nil {
		l.t.Fatalf("acquire %q: %v", name, err)
	}
	return r.Token
}

func (l lk) renew(name string, token uint64, ttlMs int64) (*pb.RenewResponse, error) {
	resp := &pb.RenewResponse{}
	return resp, l.call(subjects.LockRenew, &pb.RenewRequest{Name: name, Token: token, TtlMs: ttlMs}, resp, 5*time.Second)
}

func (l lk) release(name string, token uint64) error {
	return l.call(subjects.LockRelease, &pb.ReleaseRequest{Name: name, Token: token}, &pb.ReleaseResponse{}, 5*time.Second)
}

func (l lk) get(name string) *pb.GetLockResponse {
	l.t.Helper()
	resp := &pb.GetLockResponse{}
	if err := l.call(subjects.LockGet, &pb.GetLockRequest{Name: name}, resp, 5*time.Second); err != nil {
		l.t.Fatalf("get %q: %v", name, err)
	}
	return resp
}

// waitFree polls lock.get until name is free, failing after limit.
func (l lk) waitFree(name string, limit time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	for l.get(name).Held {
		if time.Since(start) > limit {
			l.t.Fatalf("lock %q still held after %s", name, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func reason(err error) string {
	var e *apierr.Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func solo(t testing.TB) (*nats.Conn, lk) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	return nc, lk{t: t, nc: nc}
}

func TestRoundTrip(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	name := "jobs.nightly > *" // dots, wildcards and spaces are fine
	r, err := l.acquire(name, "alice", 1500, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Token == 0 || r.TtlMs != 2000 {
		t.Fatalf("acquire = %+v; want a token and ttl rounded up to 2000", r)
	}
	g := l.get(name)
	if !g.Held || g.Owner != "alice" || g.Token != r.Token || g.TtlRemainingMs <= 0 || g.TtlRemainingMs > 2000 {
		t.Fatalf("get = %+v", g)
	}
	if _, err := l.acquire(name, "bob", 1000, 0); !errors.Is(err, apierr.ErrConflict) || !errors.Is(err, apierr.ReasonLockHeld) {
		t.Fatalf("second acquire: %v (reason %q), want 409 lock_held", err, reason(err))
	}
	rn, err := l.renew(name, r.Token, 0)
	if err != nil || rn.TtlMs != 2000 {
		t.Fatalf("renew keeping ttl = %+v, %v", rn, err)
	}
	if rn, err = l.renew(name, r.Token, 4200); err != nil || rn.TtlMs != 5000 {
		t.Fatalf("renew with ttl 4200 = %+v, %v", rn, err)
	}
	if g2 := l.get(name); g2.Token != r.Token || g2.TtlRemainingMs <= 2000 {
		t.Fatalf("after renew get = %+v; want same token, longer lease", g2)
	}
	if _, err := l.renew(name, r.Token+1, 0); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("renew with a wrong token: %v", err)
	}
	if err := l.release(name, r.Token+1); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("release with a wrong token: %v", err)
	}
	// The sequence of the holder's renewal is the lock's last sequence but
	// not its token: presented as one, it must not release or renew.
	renewal, found, err := jskv.LeaderGet(context.Background(), nc, "KV_"+set.LockBucket(), "$KV."+set.LockBucket()+"."+jskv.EncodeKey(name))
	if err != nil || !found || renewal.Seq == r.Token {
		t.Fatalf("the renewal's message: %+v, %v, %v", renewal, found, err)
	}
	if _, err := l.renew(name, renewal.Seq, 0); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("renew with the renewal's sequence as token: %v", err)
	}
	if err := l.release(name, renewal.Seq); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("release with the renewal's sequence as token: %v", err)
	}
	if err := l.release(name, r.Token); err != nil {
		t.Fatal(err)
	}
	if g := l.get(name); g.Held {
		t.Fatalf("after release get = %+v", g)
	}
	if err := l.release(name, r.Token); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("second release: %v, want not_held", err)
	}
	if _, err := l.renew(name, r.Token, 0); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("renew after release: %v, want not_held", err)
	}
	if tok := l.mustAcquire(name, "bob", 1000); tok <= r.Token {
		t.Fatalf("token after release %d <= earlier %d", tok, r.Token)
	}
}

func TestTokensGrowAcrossNamesAndRestarts(t *testing.T) {
	nc, l := solo(t)
	s := startLocker(t, nc, 1)
	var last uint64
	next := func(name string) {
		t.Helper()
		tok := l.mustAcquire(name, "o", 1000)
		if tok <= last {
			t.Fatalf("token %d for %q not above previous %d", tok, name, last)
		}
		last = tok
		if err := l.release(name, tok); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		next(fmt.Sprintf("n%d", i%2))
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	startLocker(t, nc, 1)
	for i := range 3 {
		next(fmt.Sprintf("n%d", i%2))
	}
}

func TestBadInput(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	long := strings.Repeat("x", 257)
	for _, c := range []struct {
		name string
		do   func() error
		kind error
	}{
		{"empty name", func() error { _, err := l.acquire("", "o", 1000, 0); return err }, apierr.ErrInvalid},
		{"long name", func() error { _, err := l.acquire(long, "o", 1000, 0); return err }, apierr.ErrTooLarge},
		{"bad utf8 name", func() error { _, err := l.acquire("\xff", "o", 1000, 0); return err }, apierr.ErrInvalid},
		{"empty owner", func() error { _, err := l.acquire("n", "", 1000, 0); return err }, apierr.ErrInvalid},
		{"long owner", func() error { _, err := l.acquire("n", long, 1000, 0); return err }, apierr.ErrTooLarge},
		{"ttl 0", func() error { _, err := l.acquire("n", "o", 0, 0); return err }, apierr.ErrInvalid},
		{"ttl 999", func() error { _, err := l.acquire("n", "o", 999, 0); return err }, apierr.ErrInvalid},
		{"negative wait", func() error { _, err := l.acquire("n", "o", 1000, -1); return err }, apierr.ErrInvalid},
		{"wait too long", func() error { _, err := l.acquire("n", "o", 1000, locker.MaxWaitMillis+1); return err }, apierr.ErrInvalid},
		{"renew no token", func() error { _, err := l.renew("n", 0, 0); return err }, apierr.ErrInvalid},
		{"renew ttl 500", func() error { _, err := l.renew("n", 5, 500); return err }, apierr.ErrInvalid},
		{"renew empty name", func() error { _, err := l.renew("", 5, 0); return err }, apierr.ErrInvalid},
		{"release no token", func() error { return l.release("n", 0) }, apierr.ErrInvalid},
		{"release long name", func() error { return l.release(long, 1) }, apierr.ErrTooLarge},
		{"get empty name", func() error {
			return l.call(subjects.LockGet, &pb.GetLockRequest{}, &pb.GetLockResponse{}, 5*time.Second)
		}, apierr.ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.do()
			if !errors.Is(err, c.kind) {
				t.Fatalf("err = %v, want %v", err, c.kind)
			}
			if e := (*apierr.Error)(nil); !errors.As(err, &e) || e.Message == "" {
				t.Fatalf("no sentence in %v", err)
			}
		})
	}
	// JSON works from a shell, and bad JSON is a 400.
	msg, err := nc.Request(set.Public(subjects.LockAcquire), []byte(`{"name":"j","owner":"sh","ttl_ms":"1000"}`), 5*time.Second)
	if err != nil || msg.Header.Get(apierr.HeaderCode) != "" || !strings.Contains(string(msg.Data), `"token"`) {
		t.Fatalf("JSON acquire: %v %v %s", err, msg.Header, msg.Data)
	}
	msg, err = nc.Request(set.Public(subjects.LockAcquire), []byte(`{"name":`), 5*time.Second)
	if err != nil || msg.Header.Get(apierr.HeaderCode) != "400" {
		t.Fatalf("malformed JSON: %v %v", err, msg.Header)
	}
}

// TestRenewKeepsExpiry renews a 1 s lease for several TTLs (no one else
// gets it meanwhile), then stops: the lock must still expire, which shows
// renewals keep the server-side TTL.
func TestRenewKeepsExpiry(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	tok := l.mustAcquire("r", "holder", 1000)
	end := time.Now().Add(3500 * time.Millisecond)
	for time.Now().Before(end) {
		time.Sleep(250 * time.Millisecond)
		if _, err := l.renew("r", tok, 0); err != nil {
			t.Fatalf("renew: %v", err)
		}
		if _, err := l.acquire("r", "thief", 1000, 0); !errors.Is(err, apierr.ReasonLockHeld) {
			t.Fatalf("renewed lock taken: %v", err)
		}
	}
	took := l.waitFree("r", 6*time.Second)
	t.Logf("freed %s after the last renewal (ttl 1s)", took)
	if tok2 := l.mustAcquire("r", "next", 1000); tok2 <= tok {
		t.Fatalf("token %d after expiry not above %d", tok2, tok)
	}
	if _, err := l.renew("r", tok, 0); !errors.Is(err, apierr.ReasonNotHeld) {
		t.Fatalf("renew by the expired holder: %v", err)
	}
}

// TestHolderVanishes: the holder's connection closes without release; the
// lease ends by TTL alone.
func TestHolderVanishes(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s.ClientURL())
	startLocker(t, nc, 1)
	holder := natstest.Connect(t, s.ClientURL())
	if _, err := (lk{t: t, nc: holder}).acquire("v", "gone", 2000, 0); err != nil {
		t.Fatal(err)
	}
	holder.Close()
	took := lk{t: t, nc: nc}.waitFree("v", 2000*time.Millisecond+4*time.Second)
	t.Logf("free %s after the holder vanished (ttl 2s)", took)
}

// TestExpiryWithoutLocker: the NATS server expires leases by itself.
func TestExpiryWithoutLocker(t *testing.T) {
	nc, l := solo(t)
	s := startLocker(t, nc, 1)
	tok := l.mustAcquire("e", "o", 1000)
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	stream := "KV_" + set.LockBucket()
	subj := "$KV." + set.LockBucket() + "." + jskv.EncodeKey("e")
	deadline := time.Now().Add(6 * time.Second)
	for {
		m, found, err := jskv.LeaderGet(context.Background(), nc, stream, subj)
		if err != nil {
			t.Fatal(err)
		}
		if !found || jskv.IsDeleteMarker(m.Header) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease not expired by the server while no locker ran")
		}
		time.Sleep(100 * time.Millisecond)
	}
	startLocker(t, nc, 1)
	if tok2 := l.mustAcquire("e", "o2", 1000); tok2 <= tok {
		t.Fatalf("token %d not above %d", tok2, tok)
	}
}

// lockWaiters reads the latchkey_lock_waiters gauge of this process.
func lockWaiters(t *testing.T) float64 {
	t.Helper()
	mfs, err := telemetry.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "latchkey_lock_waiters" && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

func TestWaitersFIFOOnRelease(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	tok := l.mustAcquire("w", "first", 30000)
	type result struct {
		who string
		tok uint64
		err error
	}
	results := make(chan result, 3)
	for i := range 3 {
		who := fmt.Sprintf("w%d", i)
		go func() {
			r, err := l.acquire("w", who, 30000, 20000)
			results <- result{who, r.GetToken(), err}
		}()
		// Arrival order: the next waiter goes only once this one is queued
		// (the locker's waiter gauge says so), however busy the machine.
		for deadline := time.Now().Add(10 * time.Second); lockWaiters(t) < float64(i+1); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiter %s never queued", who)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	prev := tok
	if err := l.release("w", tok); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r := <-results
		if r.err != nil {
			t.Fatalf("waiter %s: %v", r.who, r.err)
		}
		if want := fmt.Sprintf("w%d", i); r.who != want {
			t.Errorf("waiter %s got the lock in turn %d; FIFO wants %s", r.who, i, want)
		}
		if r.tok <= prev {
			t.Fatalf("token %d not above %d", r.tok, prev)
		}
		prev = r.tok
		if err := l.release("w", r.tok); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWaiterWokenByExpiry(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	tok := l.mustAcquire("x", "crashed", 1000)
	r, err := l.acquire("x", "waiter", 1000, 8000)
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if r.Token <= tok {
		t.Fatalf("token %d not above %d", r.Token, tok)
	}
}

func TestWaitEndsWith409(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	l.mustAcquire("h", "holder", 60000)
	if _, err := l.acquire("h", "waiter", 1000, 300); !errors.Is(err, apierr.ReasonLockHeld) {
		t.Fatalf("waiter: %v, want 409 lock_held", err)
	}
}

// TestClusterLeaderKill contends for one lock on a 3-node cluster while
// the node leading the lock stream is killed. Holders never overlap (a
// holder's interval ends at its release or at its lease end, whichever
// comes first) and no token is handed out twice.
func TestClusterLeaderKill(t *testing.T) {
	c := natstest.NewCluster(t)
	nc := natstest.Connect(t, c.URLs())
	startLocker(t, nc, 3)
	stream := "KV_" + set.LockBucket()

	type span struct {
		token      uint64
		start, end time.Time
	}
	var (
		mu    sync.Mutex
		spans []span
		wg    sync.WaitGroup
	)
	const ttl = 3000
	stop := time.Now().Add(4 * time.Second)
	for i := range 4 {
		cn := natstest.Connect(t, c.URLs())
		cl := lk{t: t, nc: cn}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				sent := time.Now()
				r, err := cl.acquire("contended", fmt.Sprintf("c%d", i), ttl, 2000)
				if err != nil {
					continue // held past wait, or a 503 during fail-over
				}
				time.Sleep(5 * time.Millisecond)
				end := time.Now()
				if leaseEnd := sent.Add(ttl * time.Millisecond); leaseEnd.Before(end) {
					end = leaseEnd
				}
				mu.Lock()
				spans = append(spans, span{r.Token, time.Now(), end})
				mu.Unlock()
				for range 20 {
					err := cl.release("contended", r.Token)
					if err == nil || errors.Is(err, apierr.ReasonNotHeld) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(1 * time.Second)
	leader := c.StreamLeader(stream)
	if leader < 0 {
		t.Fatal("no leader for the lock stream")
	}
	c.Kill(leader)
	wg.Wait()
	if len(spans) < 10 {
		t.Fatalf("only %d acquisitions", len(spans))
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].token < spans[j].token })
	for i := 1; i < len(spans); i++ {
		a, b := spans[i-1], spans[i]
		if a.token == b.token {
			t.Fatalf("token %d handed out twice", a.token)
		}
		if b.start.Before(a.end) {
			t.Fatalf("token %d acquired at %s before token %d ended at %s", b.token, b.start, a.token, a.end)
		}
	}
	t.Logf("%d acquisitions, leader n%d killed", len(spans), leader)
}

// TestTwoLockers: waiters spread over two locker instances (micro's queue
// group picks one per request) all get the lock in turn, one at a time.
func TestTwoLockers(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	startLocker(t, nc, 1)
	type span struct {
		token      uint64
		start, end time.Time
	}
	var (
		mu    sync.Mutex
		spans []span
		wg    sync.WaitGroup
	)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				r, err := l.acquire("two", fmt.Sprintf("c%d", i), 10000, 20000)
				if err != nil {
					t.Errorf("c%d: %v", i, err)
					return
				}
				start := time.Now()
				time.Sleep(2 * time.Millisecond)
				mu.Lock()
				spans = append(spans, span{r.Token, start, time.Now()})
				mu.Unlock()
				if err := l.release("two", r.Token); err != nil {
					t.Errorf("release: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(spans) != 18 {
		t.Fatalf("%d acquisitions, want 18", len(spans))
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].token < spans[j].token })
	for i := 1; i < len(spans); i++ {
		if spans[i].token == spans[i-1].token || spans[i].start.Before(spans[i-1].end) {
			t.Fatalf("holders %d and %d overlap", spans[i-1].token, spans[i].token)
		}
	}
}
