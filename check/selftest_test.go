package check_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// bug is a defect planted in the test double.
type bug string

const (
	noBug        bug = ""
	staleReads   bug = "linearizable gets sometimes answer the previous value"
	lostWrites   bug = "some acknowledged puts are not stored"
	frozenStale  bug = "stale gets answer from a view that stopped at start"
	staleFence   bug = "fenced writes with a lower token are accepted"
	doubleGrant  bug = "acquire grants a held lock again"
	tokenReuse   bug = "acquire hands out tokens that go backwards"
	unsortedScan bug = "scan pages come in reverse key order"
	ttlEarly     bug = "keys with a TTL expire at half their TTL"
)

// store is a test double of a whole latchkey deployment: a real micro
// service on a real NATS server that answers latchkey.kv.* and
// latchkey.lock.* from maps under one mutex (so, without a bug, it is
// linearizable), with one bug planted on purpose.
type store struct {
	bug bug
	mu  sync.Mutex
	rng *rand.Rand
	seq uint64
	kv  map[string]*entry
	// frozen is the view stale gets read under frozenStale: taken once
	// and never updated.
	frozen map[string]entry
	locks  map[string]*lease
}

type entry struct {
	live    bool
	expires time.Time // zero: never
	value   []byte
	rev     uint64
	prev    *entry
	fences  map[string]uint64
}

// alive says whether e holds a value now (it has not expired).
func (e *entry) alive() bool {
	return e != nil && e.live && (e.expires.IsZero() || time.Now().Before(e.expires))
}

type lease struct {
	token   uint64
	expires time.Time
}

func startStore(t *testing.T, b bug) *client.Client {
	t.Helper()
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	s := &store{bug: b, rng: rand.New(rand.NewPCG(1, 2)), kv: map[string]*entry{}, locks: map[string]*lease{}}
	subj := subjects.New("")
	ep := func(name string, f service.Func) service.Endpoint {
		return service.Endpoint{Name: strings.ReplaceAll(name, ".", "-"), Subject: subj.Public(name), Func: f}
	}
	svc, err := service.Start(nc, service.Config{Name: "latchkey-double", Version: "0.0.1"},
		ep(subjects.KVGet, s.get), ep(subjects.KVPut, s.put), ep(subjects.KVDelete, s.del), ep(subjects.KVScan, s.scan),
		ep(subjects.LockAcquire, s.acquire), ep(subjects.LockRenew, s.renew), ep(subjects.LockRelease, s.release))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	return client.New(natstest.Connect(t, srv.ClientURL()))
}

func (s *store) get(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.GetRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.kv[in.Key]
	if in.Consistency == pb.Consistency_CONSISTENCY_STALE && s.bug == frozenStale {
		if s.frozen == nil && len(s.kv) >= 4 {
			// The view stops here, with some keys in it.
			s.frozen = map[string]entry{}
			for k, v := range s.kv {
				s.frozen[k] = *v
			}
		}
		f := s.frozen[in.Key]
		e = &f
	}
	if e != nil && s.bug == staleReads && e.prev != nil && s.rng.IntN(3) == 0 {
		e = e.prev
	}
	if !e.alive() {
		return &pb.GetResponse{Key: in.Key}, nil
	}
	return &pb.GetResponse{Found: true, Key: in.Key, Value: e.value, Revision: e.rev}, nil
}

// write applies a put or delete under the API's preconditions.
func (s *store) write(key string, expected *uint64, fence *pb.Fence, live bool, value []byte, ttl time.Duration) (*entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.kv[key]
	if cur == nil {
		cur = &entry{fences: map[string]uint64{}}
	}
	if !cur.alive() {
		cur = &entry{rev: cur.rev, fences: cur.fences, prev: cur.prev}
	}
	if expected != nil {
		if (*expected == 0 && cur.live) || (*expected != 0 && (!cur.live || cur.rev != *expected)) {
			return nil, false, apierr.Errorf(apierr.ReasonRevisionMismatch, "revision mismatch")
		}
	}
	fences := map[string]uint64{}
	for k, v := range cur.fences {
		fences[k] = v
	}
	if fence != nil {
		if fence.Token < fences[fence.Lock] && s.bug != staleFence {
			return nil, false, apierr.Errorf(apierr.ReasonStaleFence, "stale fence")
		}
		fences[fence.Lock] = max(fence.Token, fences[fence.Lock])
	}
	if !live && !cur.live && (fence == nil || fences[fence.Lock] == cur.fences[fence.Lock]) {
		return cur, false, nil // nothing to delete, no token to record
	}
	s.seq++
	next := &entry{live: live, value: value, rev: s.seq, prev: cur, fences: fences}
	if ttl > 0 {
		if s.bug == ttlEarly {
			ttl /= 2
		}
		next.expires = time.Now().Add(ceilSeconds(ttl.Milliseconds()))
		if s.bug == ttlEarly {
			next.expires = time.Now().Add(ttl)
		}
	}
	if s.bug == lostWrites && live && s.rng.IntN(8) == 0 {
		return next, true, nil // acknowledged, never stored
	}
	s.kv[key] = next
	return next, cur.live, nil
}

func (s *store) put(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.PutRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	e, _, err := s.write(in.Key, in.ExpectedRevision, in.Fence, true, in.Value, time.Duration(in.TtlMs)*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &pb.PutResponse{Revision: e.rev}, nil
}

func (s *store) del(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.DeleteRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	e, deleted, err := s.write(in.Key, in.ExpectedRevision, in.Fence, false, nil, 0)
	if err != nil {
		return nil, err
	}
	return &pb.DeleteResponse{Deleted: deleted, Revision: e.rev}, nil
}

func (s *store) scan(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.ScanRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	limit := int(in.Limit)
	if limit == 0 {
		limit = 100
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k, e := range s.kv {
		if e.alive() && strings.HasPrefix(k, in.Prefix) && k > in.After {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	resp := &pb.ScanResponse{}
	if len(keys) > limit {
		keys, resp.More = keys[:limit], true
	}
	for _, k := range keys {
		e := s.kv[k]
		resp.Items = append(resp.Items, &pb.Item{Key: k, Value: e.value, Revision: e.rev})
	}
	if s.bug == unsortedScan {
		slices.Reverse(resp.Items)
	}
	return resp, nil
}

func ceilSeconds(ms int64) time.Duration {
	return time.Duration((ms+999)/1000) * time.Second
}

func (s *store) acquire(ctx context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.AcquireRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(time.Duration(in.WaitMs) * time.Millisecond)
	for {
		s.mu.Lock()
		l := s.locks[in.Name]
		if l == nil || time.Now().After(l.expires) || s.bug == doubleGrant {
			s.seq++
			token := s.seq
			if s.bug == tokenReuse && l != nil && s.rng.IntN(2) == 0 {
				token = l.token - 1
			}
			ttl := ceilSeconds(in.TtlMs)
			s.locks[in.Name] = &lease{token: token, expires: time.Now().Add(ttl)}
			s.mu.Unlock()
			return &pb.AcquireResponse{Token: token, TtlMs: ttl.Milliseconds()}, nil
		}
		s.mu.Unlock()
		if time.Now().After(deadline) {
			return nil, apierr.Errorf(apierr.ReasonLockHeld, "lock %q is held", in.Name)
		}
		select {
		case <-ctx.Done():
			return nil, apierr.Errorf(apierr.ReasonLockHeld, "lock %q is held", in.Name)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *store) renew(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.RenewRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[in.Name]
	if l == nil || l.token != in.Token || time.Now().After(l.expires) {
		return nil, apierr.Errorf(apierr.ReasonNotHeld, "not held")
	}
	ttl := time.Until(l.expires).Round(time.Second)
	if in.TtlMs > 0 {
		ttl = ceilSeconds(in.TtlMs)
	}
	l.expires = time.Now().Add(ttl)
	return &pb.RenewResponse{TtlMs: ttl.Milliseconds()}, nil
}

func (s *store) release(_ context.Context, req *service.Request) (proto.Message, error) {
	in := &pb.ReleaseRequest{}
	if err := req.Decode(in); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[in.Name]
	if l == nil || l.token != in.Token || time.Now().After(l.expires) {
		return nil, apierr.Errorf(apierr.ReasonNotHeld, "not held")
	}
	delete(s.locks, in.Name)
	return &pb.ReleaseResponse{}, nil
}

// TestCheckerFindsPlantedBugs runs the checker against the test double,
// once correct and once with each planted bug: the correct store must pass
// and every bug must be reported by the check meant to catch it, so that a
// green run on latchkey means something.
func TestCheckerFindsPlantedBugs(t *testing.T) {
	cases := []struct {
		bug  bug
		want string // the check that must report it; "" = no violation at all
	}{
		{noBug, ""},
		{staleReads, check.CheckLinearizable},
		{lostWrites, check.CheckLinearizable},
		{frozenStale, check.CheckStale},
		{staleFence, check.CheckFence},
		{doubleGrant, check.CheckLockOverlap},
		{tokenReuse, check.CheckLockToken},
		{unsortedScan, check.CheckScan},
		{ttlEarly, check.CheckTTL},
	}
	for _, c := range cases {
		name := string(c.bug)
		if name == "" {
			name = "correct store"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cl := startStore(t, c.bug)
			rep, err := check.Run(context.Background(), check.Config{
				Duration:    4 * time.Second,
				Clients:     6,
				Keys:        8,
				Locks:       2,
				LeaseTTL:    time.Second,
				StaleBound:  time.Second,
				Seed:        7,
				PauseHolder: true,
				Connect:     func(context.Context, int) (*client.Client, error) { return cl, nil },
				OutDir:      t.TempDir(),
			})
			if rep == nil {
				t.Fatalf("no report: %v", err)
			}
			if c.want == "" {
				if err != nil || len(rep.Violations) > 0 {
					t.Fatalf("a correct store was reported: %v %v", err, rep.Violations)
				}
				if rep.Total.OK < 100 {
					t.Fatalf("only %d operations succeeded", rep.Total.OK)
				}
				return
			}
			if n := rep.Count(c.want); n == 0 {
				t.Fatalf("bug %q: no %s violation reported; got %v", c.bug, c.want, rep.Violations)
			}
			if err == nil {
				t.Fatal("Run returned no error despite violations")
			}
			if c.want == check.CheckLinearizable && rep.Visualisation == "" {
				t.Error("no visualisation written for a linearizability violation")
			}
		})
	}
}
