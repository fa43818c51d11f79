package tests

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/tests/suite"
)

// holdSpan is one holder's tenure as the holder itself saw it.
type holdSpan struct {
	token      uint64
	start, end time.Time
}

// checkSpans fails if two tenures overlap or a token repeats: ordered by
// token, each tenure starts after the previous one ended.
func checkSpans(t *testing.T, spans []holdSpan) {
	t.Helper()
	sort.Slice(spans, func(i, j int) bool { return spans[i].token < spans[j].token })
	for i := 1; i < len(spans); i++ {
		a, b := spans[i-1], spans[i]
		if a.token == b.token {
			t.Fatalf("token %d handed out twice", a.token)
		}
		if b.start.Before(a.end) {
			t.Fatalf("holder of token %d started %s before the holder of token %d ended",
				b.token, a.end.Sub(b.start), a.token)
		}
	}
}

// TestLockMutualExclusion: clients contend for one lock and increment a
// counter with read-then-fenced-write. Any overlap of holders would lose
// an increment; the count must be exact.
func TestLockMutualExclusion(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 3})
	ctx := testCtx(t)
	const workers, rounds, lockName, key = 5, 8, "counter-lock", "counter"

	var (
		mu    sync.Mutex
		spans []holdSpan
		wg    sync.WaitGroup
		errs  = make(chan error, workers)
	)
	for w := range workers {
		c := client.New(natstest.Connect(t, srv.ClientURL()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				l, err := c.Acquire(ctx, lockName, client.WithOwner(fmt.Sprintf("w%d", w)),
					client.WithLeaseTTL(5*time.Second), client.WithWait(15*time.Second))
				if err != nil {
					errs <- fmt.Errorf("w%d acquire: %w", w, err)
					return
				}
				start := time.Now()
				n := 0
				if e, err := c.Get(ctx, key); err == nil {
					n, _ = strconv.Atoi(string(e.Value))
				} else if !errors.Is(err, client.ErrNotFound) {
					errs <- err
					return
				}
				if _, err := c.Put(ctx, key, []byte(strconv.Itoa(n+1)), client.WithFence(lockName, l.Token())); err != nil {
					errs <- fmt.Errorf("w%d fenced put: %w", w, err)
					return
				}
				end := time.Now()
				mu.Lock()
				spans = append(spans, holdSpan{l.Token(), start, end})
				mu.Unlock()
				if err := l.Release(ctx); err != nil {
					errs <- fmt.Errorf("w%d release: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e, err := client.New(nc).Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(e.Value); got != strconv.Itoa(workers*rounds) {
		t.Fatalf("counter = %s, want %d", got, workers*rounds)
	}
	checkSpans(t, spans)
}

// TestLockPausedHolderIsFenced: a holder stops renewing (a long pause),
// its lease expires, a second client takes the lock and writes; the first
// one's late writes and deletes with its old token are refused, also
// after an unfenced overwrite.
func TestLockPausedHolderIsFenced(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 3})
	ctx := testCtx(t)
	c1 := client.New(natstest.Connect(t, srv.ClientURL()))
	c2 := client.New(natstest.Connect(t, srv.ClientURL()))
	const lockName, key = "leader", "config"

	// The paused holder: no keep-alive, 1 s lease.
	l1, err := c1.Acquire(ctx, lockName, client.WithOwner("paused"), client.WithLeaseTTL(time.Second), client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Put(ctx, key, []byte("first"), client.WithFence(lockName, l1.Token())); err != nil {
		t.Fatal(err)
	}
	<-l1.Done() // its own clock says the lease is over; the pause continues
	l2, err := c2.Acquire(ctx, lockName, client.WithOwner("second"), client.WithWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release(ctx)
	if l2.Token() <= l1.Token() {
		t.Fatalf("second token %d not above first %d", l2.Token(), l1.Token())
	}
	if _, err := c2.Put(ctx, key, []byte("second"), client.WithFence(lockName, l2.Token())); err != nil {
		t.Fatal(err)
	}

	stale := func(what string) {
		t.Helper()
		_, err := c1.Put(ctx, key, []byte("late"), client.WithFence(lockName, l1.Token()))
		if !errors.Is(err, client.ErrConflict) || !errors.Is(err, client.ErrStaleFence) {
			t.Fatalf("%s: late fenced put = %v (reason %q), want 409 stale_fence", what, err, client.Reason(err))
		}
		_, _, err = c1.Delete(ctx, key, client.WithFence(lockName, l1.Token()))
		if !errors.Is(err, client.ErrConflict) || !errors.Is(err, client.ErrStaleFence) {
			t.Fatalf("%s: late fenced delete = %v, want 409 stale_fence", what, err)
		}
	}
	value := func() string {
		t.Helper()
		e, err := c2.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(e.Value)
	}
	stale("after the second holder wrote")
	if v := value(); v != "second" {
		t.Fatalf("value = %q, want the second holder's", v)
	}
	if _, err := c2.Put(ctx, key, []byte("plain")); err != nil {
		t.Fatal(err)
	}
	stale("after an unfenced overwrite")
	if v := value(); v != "plain" {
		t.Fatalf("value = %q, want the unfenced overwrite", v)
	}
	// The paused holder's own lock calls are refused too.
	if _, err := c1.Renew(ctx, lockName, l1.Token(), 0); !errors.Is(err, client.ErrNotHeld) {
		t.Fatalf("late renew = %v, want not_held", err)
	}
}

// TestLockKeepAlive: a 1 s lease held for several TTLs by keep-alive is
// never taken; after Release, Done is closed and the lock is free.
func TestLockKeepAlive(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 1})
	ctx := testCtx(t)
	c := client.New(nc)
	l, err := c.Acquire(ctx, "ka", client.WithLeaseTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range 6 {
		time.Sleep(500 * time.Millisecond)
		if _, err := c.Acquire(ctx, "ka", client.WithoutKeepAlive()); !errors.Is(err, client.ErrLockHeld) {
			t.Fatalf("acquire of a kept-alive lock = %v", err)
		}
		if st, err := c.LockInfo(ctx, "ka"); err != nil || !st.Held || st.Token != l.Token() {
			t.Fatalf("LockInfo = %+v, %v", st, err)
		}
	}
	select {
	case <-l.Done():
		t.Fatalf("lock lost while kept alive: %v", l.Err())
	default:
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	<-l.Done()
	if !errors.Is(l.Err(), client.ErrLockReleased) {
		t.Fatalf("Err after Release = %v", l.Err())
	}
	if st, err := c.LockInfo(ctx, "ka"); err != nil || st.Held {
		t.Fatalf("after release LockInfo = %+v, %v", st, err)
	}
}

// TestCLILock drives `latchkey lock` against in-process services.
func TestCLILock(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 1})
	ctx := testCtx(t)
	c := client.New(nc)
	s := "--server=" + srv.ClientURL()

	r := cli(t, "", "lock", "acquire", "cli lock", "--ttl", "5s", "--owner", "me", s)
	token, err := strconv.ParseUint(strings.TrimSpace(r.stdout), 10, 64)
	if r.code != 0 || err != nil {
		t.Fatalf("acquire: %+v", r)
	}
	tok := strconv.FormatUint(token, 10)
	if r := cli(t, "", "lock", "get", "cli lock", "--json", s); r.code != 0 || !strings.Contains(r.stdout, `"token":"`+tok+`"`) || !strings.Contains(r.stdout, `"owner":"me"`) {
		t.Fatalf("get --json: %+v", r)
	}
	if r := cli(t, "", "lock", "acquire", "cli lock", s); r.code != 4 || !strings.Contains(r.stderr, "held") {
		t.Fatalf("second acquire: %+v", r)
	}
	if r := cli(t, "", "lock", "renew", "cli lock", tok, "--ttl", "10s", s); r.code != 0 {
		t.Fatalf("renew: %+v", r)
	}
	if r := cli(t, "", "lock", "release", "cli lock", tok, s); r.code != 0 {
		t.Fatalf("release: %+v", r)
	}
	if r := cli(t, "", "lock", "release", "cli lock", tok, s); r.code != 4 {
		t.Fatalf("second release: %+v", r)
	}
	if r := cli(t, "", "lock", "release", "cli lock", "0", s); r.code != 2 {
		t.Fatalf("release with token 0: %+v", r)
	}
	if r := cli(t, "", "lock", "get", "cli lock", s); r.code != 0 || r.stdout != "not held\n" {
		t.Fatalf("get after release: %+v", r)
	}

	// run: the command sees the token, its exit code comes back, and the
	// lock is released afterwards.
	r = cli(t, "", "lock", "run", "job", "--ttl", "2s", s, "--", "sh", "-c", `echo "$LATCHKEY_LOCK_NAME $LATCHKEY_FENCE_TOKEN"; exit 7`)
	if r.code != 7 || !strings.HasPrefix(r.stdout, "job ") {
		t.Fatalf("run: %+v", r)
	}
	if st, err := c.LockInfo(ctx, "job"); err != nil || st.Held {
		t.Fatalf("after run: %+v %v", st, err)
	}

	// run whose lease is taken away: the command is stopped, exit 4.
	done := make(chan cliResult, 1)
	go func() {
		done <- cli(t, "", "lock", "run", "job", "--ttl", "1s", s, "--", "sleep", "30")
	}()
	var st *client.LockState
	eventually(t, 10*time.Second, func() error {
		st, err = c.LockInfo(ctx, "job")
		if err == nil && !st.Held {
			err = errors.New("not held yet")
		}
		return err
	})
	if err := c.ReleaseLock(ctx, "job", st.Token); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code != 4 || !strings.Contains(r.stderr, "lost") {
			t.Fatalf("run after losing the lease: %+v", r)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("lock run did not stop its command after losing the lease")
	}
}
