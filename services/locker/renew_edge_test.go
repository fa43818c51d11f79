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
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// warmUp waits until every connection reaches the locker: a bucket created
// a moment ago may not have elected its leader yet, and the locker's
// subscriptions take a while to reach the other servers of the cluster.
// It reads (lock.get) rather than acquires: a warm-up lease or release
// marker expiring just before the pilot would move the server's expiry
// passes and spoil the aim.
func warmUp(t *testing.T, s subjects.Set, conns []*nats.Conn, round int) {
	t.Helper()
	for i, nc := range conns {
		name := fmt.Sprintf("warm-%d-%d", round, i)
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := (lk{t: t, nc: nc, set: s}).call(subjects.LockGet, &pb.GetLockRequest{Name: name}, &pb.GetLockResponse{}, 5*time.Second)
			if err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("connection %d never reached the locker: %v", i, err)
			}
		}
	}
}

// contend has another client try to acquire name at the pass (next), 50 ms
// after it and two passes after it; it reports a second holder if one of
// those succeeds while the lease granted at sent (ttlMs) still holds.
func contend(l lk, name string, sent, next time.Time, ttlMs int64) (token uint64, double bool) {
	holdsUntil := sent.Add(time.Duration(ttlMs) * time.Millisecond)
	for _, d := range []time.Duration{0, 50 * time.Millisecond, 2 * natstest.ExpiryPass} {
		time.Sleep(time.Until(next.Add(d)))
		if r, err := l.acquire(name, "contender", 1000, 0); err == nil && time.Now().Before(holdsUntil) {
			return r.Token, true
		}
	}
	return 0, false
}

// pilotLead is how much earlier than the batch the pilot is written. The
// server's pass that expires the pilot commits its marker a few
// milliseconds after the pilot's TTL ran out (8 ms seen on a quiet box);
// a batch closer behind would partly expire in that same pass.
const pilotLead = 30 * time.Millisecond

// race is one round of an expiry race: a locker on a bucket of its own,
// so that the server's expiry passes for an earlier round's leases cannot
// shift this round's (each stream runs its own pass timer), a watch on
// that bucket and eight warmed-up client connections.
type race struct {
	t     *testing.T
	set   subjects.Set
	nc    *nats.Conn
	conns []*nats.Conn
	w     *natstest.ExpiryWatch
	stop  func()
}

// startRace starts the round's locker under prefix (its bucket is
// <prefix>_locks) and waits until every connection reaches it.
func startRace(t *testing.T, c *natstest.Cluster, cfg locker.Config, prefix string) *race {
	t.Helper()
	r := &race{t: t, set: subjects.New(prefix), nc: natstest.Connect(t, c.URLs()), conns: make([]*nats.Conn, 8)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg.Logger, cfg.Prefix = quiet, prefix
	s, err := locker.Start(ctx, r.nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(r.nc)
	r.w = natstest.WatchExpiries(t, js, "KV_"+r.set.LockBucket())
	r.stop = func() {
		_ = s.Stop(context.Background())
		// The bucket is only this round's: drop it so later rounds run
		// on a cluster no busier than the first.
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		_ = js.DeleteStream(dctx, "KV_"+r.set.LockBucket())
	}
	for i := range r.conns {
		r.conns[i] = natstest.Connect(t, c.URLs())
	}
	warmUp(t, r.set, append([]*nats.Conn{r.nc}, r.conns...), 0)
	return r
}

func (r *race) close() { r.stop() }

// lk is a client on the round's own connection.
func (r *race) lk() lk { return lk{t: r.t, nc: r.nc, set: r.set} }

// client is a client on one of the round's connections, picked by i.
func (r *race) client(i int) lk { return lk{t: r.t, nc: r.conns[i%len(r.conns)], set: r.set} }

// nextPass waits for the server to expire the pilot and returns when its
// next pass will run: the batch (acquired just after the pilot) expires
// then. If a batch member's marker already came with the pilot's, the
// pilot's pass ran late and the aim is lost: the round is skipped rather
// than counted as a race that did not happen.
func (r *race) nextPass(pilot, batchMember string) time.Time {
	r.t.Helper()
	at := r.w.AwaitMarker(r.t, jskv.EncodeKey(pilot))
	time.Sleep(5 * time.Millisecond)
	if bt, early := r.w.Marker(jskv.EncodeKey(batchMember)); early {
		r.t.Logf("%s: the batch expired in the pilot's pass; no race this round (pilot marker %v, batch marker %v)", r.set.Prefix, at.Format("05.000"), bt.Format("05.000"))
	}
	return at.Add(natstest.ExpiryPass)
}

// renewRace is the outcome of one raceRenewals run.
type renewRace struct {
	attempts, acked, tooLate, atEdge, doubles int
}

// raceRenewals renews 1 s leases at the instant the server expires them,
// on a 3-node cluster, and after every acknowledged renewal has a second
// client try to acquire the lock. The aim is the one of the storage TTL
// test: a pilot lock reveals the server's expiry pass, the batch, acquired
// pilotLead later, is expired together in the next pass 250 ms after, and the
// renewals are sent within a few milliseconds of it. A few renewals go
// out a little earlier, just outside the guard, so acknowledged renewals
// close to the edge are tested too.
func raceRenewals(t *testing.T, c *natstest.Cluster, cfg locker.Config, locks, round int) renewRace {
	t.Helper()
	r := startRace(t, c, cfg, fmt.Sprintf("rr%d", round))
	defer r.close()
	w, client := r.w, r.client
	name := func(i int) string { return fmt.Sprintf("lock%04d", i) }

	pilot := "pilot"
	r.lk().mustAcquire(pilot, "pilot", 1000)
	time.Sleep(pilotLead)
	tokens := make([]uint64, locks)
	var wg sync.WaitGroup
	for g := range 2 * len(r.conns) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < locks; i += 2 * len(r.conns) {
				tokens[i] = client(g).mustAcquire(name(i), "first", 1000)
			}
		}()
	}
	wg.Wait()
	expiry := make([]time.Time, locks)
	for i, tok := range tokens {
		expiry[i] = w.StoredAt(t, tok).Add(time.Second)
	}
	var (
		mu   sync.Mutex
		res  renewRace
		next time.Time // the aimed-at pass, known once the pilot expired
		aim  = make(chan struct{})
	)
	renewAt := func(i int, at time.Time) {
		defer wg.Done()
		time.Sleep(time.Until(at))
		sent := time.Now()
		resp, err := client(i).renew(name(i), tokens[i], 0)
		<-aim
		mu.Lock()
		res.attempts++
		if natstest.AbsDur(sent.Sub(expiry[i])) <= 50*time.Millisecond || natstest.AbsDur(sent.Sub(next)) <= 50*time.Millisecond {
			res.atEdge++
		}
		switch {
		case err == nil:
			res.acked++
		case errors.Is(err, apierr.ReasonRenewTooLate) || errors.Is(err, apierr.ReasonNotHeld):
			res.tooLate++
		default:
			t.Errorf("renew %s: %v", name(i), err)
		}
		mu.Unlock()
		if err != nil {
			return
		}
		// The renewed lease holds until sent + its ttl: nobody else may
		// acquire before then, pass or no pass.
		if tok, double := contend(client(i+1), name(i), sent, next, resp.TtlMs); double {
			mu.Lock()
			res.doubles++
			first := res.doubles <= 3
			mu.Unlock()
			if first {
				t.Logf("%s: renewal sent %v after the pass was acknowledged, yet a second client acquired it (token %d)",
					name(i), sent.Sub(next), tok)
			}
		}
	}
	// Every tenth lock is renewed just outside the guard: acknowledged,
	// close to the edge.
	for i := 0; i < locks; i += 10 {
		wg.Add(1)
		go renewAt(i, expiry[i].Add(-locker.DefaultRenewGuard-20*time.Millisecond))
	}
	next = r.nextPass(pilot, name(1))
	close(aim)
	for i := range locks {
		if i%10 != 0 && expiry[i].Before(next) {
			wg.Add(1)
			go renewAt(i, next.Add(time.Duration(i%90-80)*250*time.Microsecond)) // -20 ms .. +2.5 ms: a renewal reads first
		}
	}
	wg.Wait()
	return res
}

// TestNoSecondHolderAfterAckedRenewal races renewals against the server's
// expiry of the leases they renew. A renewal inside the guard is refused
// (renew_too_late); one that is acknowledged holds: no second client
// acquires the lock before the renewed lease ends.
func TestNoSecondHolderAfterAckedRenewal(t *testing.T) {
	c := natstest.NewCluster(t)
	// Rounds run until 200 renewals were sent at the edge.
	var total renewRace
	for round := 0; round < 20 && total.atEdge < 200; round++ {
		r := raceRenewals(t, c, locker.Config{Replicas: 3}, 100, round)
		t.Logf("guard on, round %d: %+v", round, r)
		total.attempts += r.attempts
		total.acked += r.acked
		total.tooLate += r.tooLate
		total.atEdge += r.atEdge
		total.doubles += r.doubles
	}
	if total.doubles > 0 {
		t.Errorf("%d acknowledged renewals were followed by a second holder", total.doubles)
	}
	if total.atEdge < 200 {
		t.Errorf("only %d renewals were sent within 50 ms of an expiry; the test did not reach the edge", total.atEdge)
	}
	if total.acked == 0 || total.tooLate == 0 {
		t.Errorf("want both acknowledged and too-late renewals near the edge, got %+v", total)
	}
}

// TestRenewRaceDoubleHoldsWithoutGuard is the same race with the guard
// switched off: a second holder must appear, or the test above proves
// nothing.
func TestRenewRaceDoubleHoldsWithoutGuard(t *testing.T) {
	c := natstest.NewCluster(t)
	doubles := 0
	for round := 0; round < 20 && doubles == 0; round++ {
		r := raceRenewals(t, c, locker.Config{Replicas: 3, Unsafe: locker.Unsafe{NoRenewGuard: true}}, 100, round)
		t.Logf("guard off, round %d: %+v", round, r)
		doubles += r.doubles
	}
	if doubles == 0 {
		t.Fatal("without the guard no acknowledged renewal was followed by a second holder: the race does not reach the server's expiry window")
	}
}

// TestRenewInsideTheGuard pins what a holder sees: a renewal less than the
// guard before its lease's server-side end is 409 renew_too_late and
// changes nothing (the lease still ends, the lock frees); one earlier is
// accepted.
func TestRenewInsideTheGuard(t *testing.T) {
	nc, l := solo(t)
	startLocker(t, nc, 1)
	js, _ := jetstream.New(nc)
	expiryOf := func(token uint64) time.Time {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "KV_"+set.LockBucket())
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMsg(ctx, token)
		if err != nil {
			t.Fatal(err)
		}
		return m.Time.Add(time.Second)
	}
	tok := l.mustAcquire("late", "a", 1000)
	end := expiryOf(tok)
	time.Sleep(time.Until(end.Add(-locker.DefaultRenewGuard / 2)))
	_, err := l.renew("late", tok, 0)
	if !errors.Is(err, apierr.ReasonRenewTooLate) {
		t.Fatalf("renew %v before the lease ends: %v, want renew_too_late", time.Until(end), err)
	}
	if free := l.waitFree("late", 3*time.Second); free > 2*time.Second {
		t.Fatalf("a refused renewal kept the lock held for %v", free)
	}

	tok = l.mustAcquire("early", "a", 1000)
	end = expiryOf(tok)
	time.Sleep(time.Until(end.Add(-2 * locker.DefaultRenewGuard)))
	if _, err := l.renew("early", tok, 0); err != nil {
		t.Fatalf("renew %v before the lease ends: %v", time.Until(end), err)
	}
	time.Sleep(time.Until(end.Add(300 * time.Millisecond)))
	if g := l.get("early"); !g.Held || g.Token != tok {
		t.Fatalf("after an accepted renewal, past the old lease: %v", g)
	}
}

// raceAcquiresOnMarkers acquires locks at the instant their release
// markers expire. A release marker (a KV delete with its own Nats-TTL) is
// not a marker to the server: when it runs out the server writes an
// expiry marker with Nats-Rollup: sub, which can purge an acquire
// conditioned on the release marker. Markers here live 1 s
// (ReleaseMarkerTTL) so the test reaches that instant; the aim is the one
// of raceRenewals. After every acknowledged acquire a second client tries
// to acquire: it must fail while the first lease lasts.
func raceAcquiresOnMarkers(t *testing.T, c *natstest.Cluster, cfg locker.Config, locks, round int) renewRace {
	t.Helper()
	cfg.ReleaseMarkerTTL = time.Second
	r := startRace(t, c, cfg, fmt.Sprintf("rm%d", round))
	defer r.close()
	w, client := r.w, r.client
	name := func(i int) string { return fmt.Sprintf("lock%04d", i) }
	// released returns the sequence of name's release marker.
	released := func(l lk, name string) uint64 {
		tok := l.mustAcquire(name, "first", 60000)
		if err := l.release(name, tok); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		bucket := r.set.LockBucket()
		m, found, err := jskv.LeaderGet(ctx, r.nc, "KV_"+bucket, "$KV."+bucket+"."+jskv.EncodeKey(name))
		if err != nil || !found {
			t.Fatalf("release marker of %s: %v", name, err)
		}
		return m.Seq
	}

	pilot := "pilot"
	released(r.lk(), pilot)
	time.Sleep(pilotLead)
	markers := make([]uint64, locks)
	var wg sync.WaitGroup
	for g := range 2 * len(r.conns) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < locks; i += 2 * len(r.conns) {
				markers[i] = released(client(g), name(i))
			}
		}()
	}
	wg.Wait()
	expiry := make([]time.Time, locks)
	for i, seq := range markers {
		expiry[i] = w.StoredAt(t, seq).Add(time.Second)
	}
	next := r.nextPass(pilot, name(1))

	var (
		mu  sync.Mutex
		res renewRace
	)
	for i := range locks {
		if !expiry[i].Before(next) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(next.Add(time.Duration(i%90-80) * 250 * time.Microsecond)))
			sent := time.Now()
			resp, err := client(i).acquire(name(i), "second", 1000, 0)
			mu.Lock()
			res.attempts++
			if natstest.AbsDur(sent.Sub(expiry[i])) <= 50*time.Millisecond || natstest.AbsDur(sent.Sub(next)) <= 50*time.Millisecond {
				res.atEdge++
			}
			if err == nil {
				res.acked++
			} else if !errors.Is(err, apierr.ReasonLockHeld) {
				t.Errorf("acquire %s: %v", name(i), err)
			}
			mu.Unlock()
			if err != nil {
				return
			}
			if tok, double := contend(client(i+1), name(i), sent, next, resp.TtlMs); double {
				mu.Lock()
				res.doubles++
				first := res.doubles <= 3
				mu.Unlock()
				if first {
					t.Logf("%s: acquire sent %v after the pass was acknowledged (token %d), yet another client acquired it (token %d)",
						name(i), sent.Sub(next), resp.Token, tok)
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// TestNoSecondHolderWhenReleaseMarkerExpires: acquires at the instant a
// release marker runs out are never purged by the server's rollup.
func TestNoSecondHolderWhenReleaseMarkerExpires(t *testing.T) {
	c := natstest.NewCluster(t)
	var total renewRace
	for round := 0; round < 20 && total.atEdge < 200; round++ {
		r := raceAcquiresOnMarkers(t, c, locker.Config{Replicas: 3}, 100, round)
		t.Logf("guard on, round %d: %+v", round, r)
		total.attempts += r.attempts
		total.acked += r.acked
		total.atEdge += r.atEdge
		total.doubles += r.doubles
	}
	if total.doubles > 0 {
		t.Errorf("%d acknowledged acquires were followed by a second holder", total.doubles)
	}
	if total.atEdge < 200 || total.acked == 0 {
		t.Errorf("the test did not reach the edge: %+v", total)
	}
}

// TestMarkerRaceDoubleHoldsWithoutGuard: the same race with the marker
// guard off must produce a second holder.
func TestMarkerRaceDoubleHoldsWithoutGuard(t *testing.T) {
	c := natstest.NewCluster(t)
	doubles := 0
	for round := 0; round < 20 && doubles == 0; round++ {
		r := raceAcquiresOnMarkers(t, c, locker.Config{Replicas: 3, Unsafe: locker.Unsafe{NoMarkerGuard: true}}, 100, round)
		t.Logf("guard off, round %d: %+v", round, r)
		doubles += r.doubles
	}
	if doubles == 0 {
		t.Fatal("without the guard no acknowledged acquire was followed by a second holder")
	}
}

// TestRenewWhileLockGetPolled: lock.get confirms each read with a write
// conditioned on the lock's key, and nats-server refuses a conditional
// write on a key while another is in flight. Renewals (and releases) must
// wait such a refusal out rather than take it for a lost race: polled
// hard, a held lock keeps every renewal.
func TestRenewWhileLockGetPolled(t *testing.T) {
	c := natstest.NewCluster(t)
	nc := natstest.Connect(t, c.URLs())
	startLocker(t, nc, 3)
	conns := make([]*nats.Conn, 8)
	for i := range conns {
		conns[i] = natstest.Connect(t, c.URLs())
	}
	warmUp(t, set, append(conns, nc), 0)
	l := lk{t: t, nc: nc}
	tok := l.mustAcquire("polled", "holder", 2000)
	stop := make(chan struct{})
	var gets sync.WaitGroup
	var polled, refused int64
	var mu sync.Mutex
	for _, pc := range conns {
		gets.Add(1)
		go func() {
			defer gets.Done()
			p := lk{t: t, nc: pc}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp := &pb.GetLockResponse{}
				err := p.call(subjects.LockGet, &pb.GetLockRequest{Name: "polled"}, resp, 5*time.Second)
				mu.Lock()
				polled++
				if err != nil {
					refused++
					var e *apierr.Error
					if !errors.As(err, &e) || e.Code() != 503 {
						t.Errorf("lock.get while renewed: %v; want an answer or a 503", err)
					} else if refused <= 3 {
						t.Logf("lock.get refused: %s: %v", e.Reason, err)
					}
				}
				mu.Unlock()
			}
		}()
	}
	const renewals = 150
	for i := range renewals {
		time.Sleep(20 * time.Millisecond)
		if _, err := l.renew("polled", tok, 0); err != nil {
			close(stop)
			gets.Wait()
			t.Fatalf("renewal %d while lock.get was polled (%d gets so far): %v", i, polled, err)
		}
	}
	close(stop)
	gets.Wait()
	t.Logf("%d renewals kept the lock while %d lock.gets were answered (%d refused)", renewals, polled, refused)
	if err := l.release("polled", tok); err != nil {
		t.Fatalf("release while polled: %v", err)
	}
}
