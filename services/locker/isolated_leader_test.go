package locker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// TestIsolatedLeaderLockGet cuts the lock stream's leader off from its two
// peers while a locker and a client stay connected to it alone. Through
// the majority, alice's lease (token T1) is released and bob acquires the
// lock (token T2). Then lock.get is sent through the isolated server until
// it notices it lost its quorum and steps down (10-20 s after the cut). The
// deposed leader still answers STREAM.MSG.GET with alice's record all that
// time (the raw control reads show it), and docs/API.md requires lock.get
// to be confirmed by a quorum: every answer must be "held by bob, T2" or a
// 503, never alice's T1 (nor "free").
//
// The lease is long (60 s) and handed over by release and acquire rather
// than by expiry: the isolated server ticks TTLs too, and an expiry there
// would hide the stale record instead of showing it.
//
// The test fails, rather than passes vacuously, when no lock.get began
// while the isolated server still claimed leadership.
func TestIsolatedLeaderLockGet(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	// On a very busy machine the majority's election can take so long
	// that the cut node has stepped down before the reads begin; such an
	// attempt proves nothing and is run again on a fresh cluster.
	for attempt := range 3 {
		reached := false
		t.Run(fmt.Sprintf("attempt-%d", attempt), func(t *testing.T) { reached = isolatedLockGet(t) })
		if reached || t.Failed() {
			return
		}
	}
	t.Fatal("in 3 attempts the isolated server never still claimed leadership when the reads began")
}

// isolatedLockGet runs the scenario once; reached is false when the
// isolated server no longer claimed leadership once the majority had
// moved on (the edge was not reached, nothing was checked).
func isolatedLockGet(t *testing.T) (reached bool) {
	t0 := time.Now()
	c := natstest.StartPartitionable(t, natstest.PartitionOptions{})
	stream := "KV_" + set.LockBucket()
	const name = "isolated-lock"
	keySubject := "$KV." + set.LockBucket() + "." + jskv.EncodeKey(name)

	// One locker per server, each connected to that server only.
	conns := make([]*nats.Conn, len(c.Nodes))
	for i := range c.Nodes {
		conns[i] = c.Connect(t, []int{i})
		startLocker(t, conns[i], 3)
	}
	t1 := acquireUntilAcked(t, lk{t: t, nc: conns[0]}, name, "alice", 10*time.Second)
	// Cut the node that leads both the stream and the meta group: that
	// deposed leader answers raw reads alone the longest.
	old := c.MetaLeader()
	if old < 0 {
		t.Fatal("no meta leader")
	}
	c.MoveStreamLeader(stream, old)
	majority := c.Others(old)
	iso, maj := conns[old], lk{t: t, nc: conns[majority[0]]}
	t.Logf("setup %s: alice holds with token %d, stream and meta leader n%d (meta leader now n%d)",
		time.Since(t0).Round(time.Millisecond), t1, old, c.MetaLeader())

	c.Cut(old)
	cut := time.Now()
	eventually(t, 20*time.Second, "a new leader on the majority side", func() bool {
		return c.StreamLeader(stream, majority...) >= 0
	})
	t.Logf("majority elected n%d %s after the cut", c.StreamLeader(stream, majority...), time.Since(cut).Round(time.Millisecond))
	releaseUntilAcked(t, maj, name, t1, 15*time.Second)
	t2 := acquireUntilAcked(t, maj, name, "bob", 15*time.Second)
	t.Logf("released T1 and acquired T2=%d through the majority %s after the cut; n%d claims leadership: %v",
		t2, time.Since(cut).Round(time.Millisecond), old, c.ClaimsStreamLeader(old, stream))

	if !c.ClaimsStreamLeader(old, stream) {
		t.Logf("n%d stepped down before the reads could begin; trying again", old)
		return false
	}
	claims := func() bool { return c.ClaimsStreamLeader(old, stream) }
	deadline := cut.Add(24 * time.Second)
	var (
		wg             sync.WaitGroup
		gets, control  natstest.EdgeReads
		loopStart      = time.Now()
		verdictOfError = func(ctx context.Context, err error) (natstest.Verdict, string) {
			switch {
			case ctx.Err() != nil:
				return natstest.TimedOut, ""
			case errors.Is(err, apierr.ErrUnavailable):
				return natstest.Refused, ""
			}
			return natstest.Erred, err.Error()
		}
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		gets = natstest.ReadAtEdge(deadline, claims, func() (natstest.Verdict, string) {
			defer time.Sleep(5 * time.Millisecond) // thousands of reads are plenty; spare the shared cores
			resp := &pb.GetLockResponse{}
			if v, d, err := callEdge(iso, set.Public(subjects.LockGet), &pb.GetLockRequest{Name: name}, resp); err != nil {
				return v, d
			}
			if resp.Held && resp.Token == t2 && resp.Owner == "bob" {
				return natstest.Fresh, ""
			}
			return natstest.Stale, fmt.Sprintf("held=%v owner=%q token=%d (T1 %d, T2 %d)", resp.Held, resp.Owner, resp.Token, t1, t2)
		})
	}()
	go func() { // the hazard itself: the deposed leader's own answer
		defer wg.Done()
		control = natstest.ReadAtEdge(deadline, claims, func() (natstest.Verdict, string) {
			defer time.Sleep(20 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			m, found, err := jskv.LeaderGet(ctx, iso, stream, keySubject)
			if err != nil {
				return verdictOfError(ctx, err)
			}
			if !found {
				return natstest.Stale, "not found"
			}
			if m.Seq >= t2 {
				return natstest.Fresh, ""
			}
			return natstest.Stale, fmt.Sprintf("sequence %d (T2 %d)", m.Seq, t2)
		})
	}()
	wg.Wait()
	t.Logf("n%d last seen claiming leadership %s after the cut", old, loopStart.Add(max(gets.Claimed, control.Claimed)).Sub(cut).Round(time.Millisecond))
	t.Logf("lock.get: %v", gets)
	t.Logf("control, raw STREAM.MSG.GET to the isolated server: %v", control)
	if control.Counts[natstest.Stale] == 0 {
		// Without the hazard a pass proves nothing about the locker.
		t.Errorf("the isolated server never answered a raw STREAM.MSG.GET with alice's record after bob acquired: the edge was not reproduced")
	}
	gets.Require(t, "lock.get", fmt.Sprintf("n%d", old), edgeWait, edgeDeadline)
	return true
}

const (
	// edgeDeadline is the deadline a read under test tells the service
	// (service.HeaderTimeout); edgeWait is how long the test waits for the
	// reply. The margin between them lets a service's 503 at its deadline
	// arrive, so that no reply at all is a hang, not a race.
	edgeDeadline = 3 * time.Second
	edgeWait     = 2 * edgeDeadline
)

// callEdge sends a request with a service deadline of edgeDeadline and waits
// edgeWait for the reply. err is nil on a success reply (resp is filled);
// otherwise the verdict is Refused for a 503, TimedOut for no reply, and
// Erred for any other error.
func callEdge(nc *nats.Conn, subject string, req, resp proto.Message) (natstest.Verdict, string, error) {
	data, err := proto.Marshal(req)
	if err != nil {
		panic(err)
	}
	hdr := nats.Header{service.HeaderTimeout: {fmt.Sprint(edgeDeadline.Milliseconds())}}
	ctx, cancel := context.WithTimeout(context.Background(), edgeWait)
	defer cancel()
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
	if err == nil {
		err = service.DecodeReply(reply, resp)
	}
	switch {
	case err == nil:
		return natstest.Fresh, "", nil
	case ctx.Err() != nil:
		return natstest.TimedOut, "", err
	case errors.Is(err, apierr.ErrUnavailable):
		return natstest.Refused, "", err
	}
	return natstest.Erred, err.Error(), err
}

// acquireUntilAcked acquires name for owner with a 60 s lease, retrying
// 503s (no leader yet, a leader change) until it is acknowledged, and
// returns the token. An acquire whose reply was lost may still have been
// committed: a later 409 naming owner as holder counts as acquired.
func acquireUntilAcked(t *testing.T, l lk, name, owner string, d time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(d)
	lost := false
	for {
		r, err := l.acquire(name, owner, 60000, 0)
		if err == nil {
			return r.Token
		}
		if lost && errors.Is(err, apierr.ErrConflict) {
			g := &pb.GetLockResponse{}
			if gerr := l.call(subjects.LockGet, &pb.GetLockRequest{Name: name}, g, 5*time.Second); gerr == nil && g.Held && g.Owner == owner {
				return g.Token
			}
		}
		if !errors.Is(err, apierr.ErrUnavailable) && !lost || time.Now().After(deadline) {
			t.Fatalf("acquire %q for %s: %v", name, owner, err)
		}
		lost = lost || errors.Is(err, apierr.ErrUnavailable)
		time.Sleep(100 * time.Millisecond)
	}
}

// releaseUntilAcked releases token's lease on name, retrying 503s; after a
// 503 the release may have been committed, so a later 409 not_held counts
// as released.
func releaseUntilAcked(t *testing.T, l lk, name string, token uint64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	lost := false
	for {
		err := l.release(name, token)
		if err == nil || lost && errors.Is(err, apierr.ReasonNotHeld) {
			return
		}
		if !errors.Is(err, apierr.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("release %q token %d: %v", name, token, err)
		}
		lost = true
		time.Sleep(100 * time.Millisecond)
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
