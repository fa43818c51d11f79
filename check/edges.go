package check

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/latchkey/latchkey/client"
)

// The edge workloads aim at the instants where the field broke latchkey's
// promises (docs/CORRECTNESS.md, "Hunting the TTL and fence edges"): the
// instant a key's TTL runs out, the instant a lease runs out, fences next
// to TTLs, and keys fenced by more locks than the API allows. Each is a
// short, dense burst repeated for the run, recorded like all other traffic,
// so the ordinary checks judge it: porcupine (with TTL expiry as a model
// step), durability (the read-back of every aimed key), lock overlap (with
// renewals credited from their invocation), fences, plus the fence rules
// and writability checks in this file.

// Edges selects the edge workloads of a run.
type Edges struct {
	// TTLWrites puts keys with ttl_ms and then writes them (puts, CAS puts
	// on the TTL'd revision, deletes) across the instant the server expires
	// them, and reads each back once the expiry is surely over.
	TTLWrites bool
	// Renewals renews leases at the instant they run out, and has a second
	// client try to acquire (try-once) right after each acknowledged
	// renewal.
	Renewals bool
	// FenceTTL writes a key under a newer token, then tries to give it a
	// TTL, waits past that TTL, and writes it under an older token (which
	// must be refused); it also probes fence+ttl_ms and a never-issued
	// token.
	FenceTTL bool
	// ManyFences fences one key by more distinct locks than the API's
	// bound (short names) and another by hundreds of long-named locks, and
	// then checks that both stay writable.
	ManyFences bool
	// Keys is how many keys (and locks) each burst aims at at once;
	// default 24.
	Keys int
}

// AllEdges selects every edge workload.
func AllEdges() Edges {
	return Edges{TTLWrites: true, Renewals: true, FenceTTL: true, ManyFences: true}
}

// Any says whether some edge workload is selected.
func (e Edges) Any() bool { return e.TTLWrites || e.Renewals || e.FenceTTL || e.ManyFences }

func (e *Edges) defaults() {
	if e.Keys <= 0 {
		e.Keys = 24
	}
}

// ParseEdges reads a comma-separated list of edge workloads: ttl, renew,
// fence-ttl, fences, or all.
func ParseEdges(s string) (Edges, error) {
	var e Edges
	for _, w := range strings.Split(s, ",") {
		switch strings.TrimSpace(w) {
		case "":
		case "all":
			e = AllEdges()
		case "ttl":
			e.TTLWrites = true
		case "renew":
			e.Renewals = true
		case "fence-ttl":
			e.FenceTTL = true
		case "fences":
			e.ManyFences = true
		default:
			return e, fmt.Errorf("unknown edge workload %q (want ttl, renew, fence-ttl, fences or all)", w)
		}
	}
	return e, nil
}

const (
	// edgeClients is how many connections the edge workloads use: TTL
	// writes, lock holders, contenders, fence scenarios.
	edgeClients = 4
	// edgeTTL is the TTL of aimed keys and leases: the shortest the API
	// allows, so bursts repeat often.
	edgeTTL = time.Second
	// aimBefore and aimAfter bound where around the estimated server-side
	// expiry the aimed operations go: the server's TTLs are whole seconds
	// and its expiry timer ticks about every 250 ms, so the marker lands in
	// [expiry, expiry+250ms]; a little on either side covers the estimate's
	// error (the commit time is only known to lie between call and return).
	aimBefore = 50 * time.Millisecond
	aimAfter  = 300 * time.Millisecond
	// settle is waited after the last aimed write before the read-back:
	// past any expiry tick the writes could have raced.
	settle = 700 * time.Millisecond
	// contendFor is how long after an acknowledged renewal the contender
	// keeps trying: a swallowed renewal frees the lock when the expiry
	// marker commits, right after the renewal, well inside this; and the
	// renewed lease (1 s) outlasts it.
	contendFor = 300 * time.Millisecond
	// unissuedToken is above any token a lock bucket will ever issue: a
	// fence with it must be refused (400 unknown_token).
	unissuedToken = uint64(1) << 52
	// manyShort and manyLong are how many locks fence the two keys of the
	// ManyFences workload: past the 32-lock bound, and (long names) far
	// past the 64 KiB of headers JetStream accepts, where the incident's
	// key became unwritable.
	manyShort = 40
	manyLong  = 220
)

// ProbeWritable marks the unfenced puts that must find a key writable
// after it was fenced by many locks (checkWritable).
const ProbeWritable = "writable"

// edge ids: the client ids the edge workloads record, after the random
// workers (0..Clients-1), the paused holder, its successor and the TTL
// worker.
func (r *run) edgeID(i int) int { return r.cfg.Clients + 3 + i }

// startEdges starts the selected edge workloads on wg.
func (r *run) startEdges(ctx context.Context, wg *sync.WaitGroup, cs []*client.Client) {
	e := r.cfg.Edges
	if e.TTLWrites {
		wg.Go(func() { r.ttlEdges(ctx, cs[0]) })
	}
	if e.Renewals {
		wg.Go(func() { r.renewEdges(ctx, cs[1], cs[2]) })
	}
	if e.ManyFences {
		wg.Go(func() { r.manyFences(cs[3], "fs", manyShort, 0) })
		wg.Go(func() { r.manyFences(cs[3], "fl", manyLong, 250) })
	}
	if e.FenceTTL {
		wg.Go(func() { r.fenceTTLEdges(ctx, cs[3]) })
	}
}

// tallyEdge counts one outcome of an edge workload for the report.
func (r *run) tallyEdge(what string, op Op) {
	o := op.Outcome.String()
	if op.Outcome != OK && op.Reason != "" {
		o += " " + op.Reason
	}
	r.edgeMu.Lock()
	if r.edgeTally == nil {
		r.edgeTally = map[string]int{}
	}
	r.edgeTally[what+": "+o]++
	r.edgeMu.Unlock()
}

// edgeLines is the report's summary of the edge workloads.
func (r *run) edgeLines() []string {
	r.edgeMu.Lock()
	defer r.edgeMu.Unlock()
	var out []string
	for k, n := range r.edgeTally {
		out = append(out, fmt.Sprintf("%s: %d", k, n))
	}
	slices.Sort(out)
	return out
}

// sleepUntil waits until offset t of the run, or ctx's end.
func (r *run) sleepUntil(ctx context.Context, t time.Duration) {
	if d := t - r.rec.now(); d > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}

// expiryOf estimates when the server expires what op wrote with a TTL (or
// lease) of ttl: the commit lies between its call and return, and the
// server's TTL is ttl rounded up to whole seconds.
func expiryOf(op Op, ttl time.Duration) time.Duration {
	return op.Call + (op.Return-op.Call)/2 + ceilSecond(ttl)
}

// aim picks an offset in [-aimBefore, aimAfter].
func aim(rng *rand.Rand) time.Duration {
	return -aimBefore + time.Duration(rng.Int64N(int64(aimBefore+aimAfter)))
}

// ttlEdges runs bursts: Keys fresh keys are put with a TTL at once, each
// is written once (a put, a CAS put on the TTL'd revision, or a delete) at
// an aimed instant around its expiry, and read back after settle.
//
// Where to aim follows from how nats-server 2.15 expires (filestore.go
// resetAgeChk, thw): a stream's expiry timer fires at its next
// expiration, but never sooner than 250 ms after it last ran. Keys put
// together on one shard therefore expire in two waves: the first key (and
// any key expiring by then) when the timer first fires, one TTL after the
// burst's first commit; all the others 250 ms later. A write swallowed by
// an expiry marker must commit in the short gap between the server seeing
// the expiring message as last and the marker committing, so most writes
// go densely around those two instants, the rest anywhere in
// [expiry-aimBefore, expiry+aimAfter].
func (r *run) ttlEdges(ctx context.Context, c *client.Client) {
	id := r.edgeID(0)
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0xed6e))
	for round := 0; ctx.Err() == nil; round++ {
		n := r.cfg.Edges.Keys
		offs, kinds := make([]time.Duration, n), make([]int, n)
		for i := range n {
			switch p := rng.IntN(100); {
			case p < 65: // the second wave
				offs[i] = 246*time.Millisecond + time.Duration(rng.IntN(20_000))*time.Microsecond
			case p < 80: // the first
				offs[i] = -4*time.Millisecond + time.Duration(rng.IntN(16_000))*time.Microsecond
			default:
				offs[i] = aim(rng)
			}
			kinds[i] = rng.IntN(10)
		}
		bases := make([]Op, n)
		var wg sync.WaitGroup
		for i := range n {
			key := fmt.Sprintf("%se/ttl/%d/%d", r.cfg.Namespace, round, i)
			wg.Go(func() { bases[i] = r.putTTL(c, id, key, fmt.Sprintf("ttl-%d-%d", round, i), nil, 0, "", edgeTTL, "") })
		}
		wg.Wait()
		// The burst's first commit, estimated: offsets count from one TTL
		// after it.
		first := time.Duration(-1)
		for _, b := range bases {
			if b.Outcome == OK && (first < 0 || expiryOf(b, edgeTTL) < first) {
				first = expiryOf(b, edgeTTL)
			}
		}
		for i, base := range bases {
			if base.Outcome != OK {
				continue
			}
			wg.Go(func() {
				r.sleepUntil(context.Background(), first+offs[i])
				v := fmt.Sprintf("aim-%d-%d", round, i)
				var op Op
				switch k := kinds[i]; {
				case k < 6:
					op = r.put(context.Background(), c, id, base.Key, v, nil, 0, "")
				case k < 8:
					rev := base.Rev
					op = r.put(context.Background(), c, id, base.Key, v, &rev, 0, "")
				default:
					op = r.del(context.Background(), c, id, base.Key, 0, "")
				}
				r.tallyEdge("write at a TTL instant ("+string(op.Kind)+")", op)
				r.sleepUntil(context.Background(), op.Return+settle)
				r.get(c, id, base.Key, KindGet)
			})
		}
		wg.Wait()
	}
}

// renewEdges runs bursts on Keys locks at once: each is acquired with a
// one-second lease, renewed at an aimed instant, and after an acknowledged
// renewal a second client tries to acquire it (try-once) for contendFor;
// then it is released. A renewal swallowed by the lease's expiry shows as
// the contender holding the lock while the renewed lease had time left.
// The leases of a burst expire in the same two waves as TTL'd keys (see
// ttlEdges), so renewals go mostly around those instants, some from well
// before the renew guard (those must be accepted and hold) to past the
// second wave.
func (r *run) renewEdges(ctx context.Context, holder, contender *client.Client) {
	hid, cid := r.edgeID(1), r.edgeID(2)
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0x7e0))
	n := r.cfg.Edges.Keys
	for round := 0; ctx.Err() == nil; round++ {
		offs := make([]time.Duration, n)
		for j := range n {
			switch p := rng.IntN(100); {
			case p < 55:
				offs[j] = 246*time.Millisecond + time.Duration(rng.IntN(20_000))*time.Microsecond
			case p < 75:
				offs[j] = -4*time.Millisecond + time.Duration(rng.IntN(16_000))*time.Microsecond
			default:
				offs[j] = -400*time.Millisecond + time.Duration(rng.Int64N(int64(400*time.Millisecond+aimAfter)))
			}
		}
		acqs := make([]Op, n)
		var wg sync.WaitGroup
		for j := range n {
			name := fmt.Sprintf("%se/renew/%d", r.cfg.Namespace, j)
			wg.Go(func() { acqs[j] = r.acquire(holder, hid, name, edgeTTL, 0) })
		}
		wg.Wait()
		first := time.Duration(-1)
		for _, a := range acqs {
			if a.Outcome == OK && (first < 0 || expiryOf(a, edgeTTL) < first) {
				first = expiryOf(a, edgeTTL)
			}
		}
		for j, acq := range acqs {
			if acq.Outcome != OK {
				continue
			}
			wg.Go(func() {
				r.sleepUntil(context.Background(), first+offs[j])
				rn := r.renew(holder, hid, acq.Key, acq.Token, edgeTTL)
				r.tallyEdge("renewal at the lease's end", rn)
				if rn.Outcome == OK {
					for r.rec.now() < rn.Return+contendFor {
						a := r.acquire(contender, cid, acq.Key, edgeTTL, 0)
						if a.Outcome == OK {
							r.tallyEdge("contender acquired after an acknowledged renewal", a)
							r.release(contender, cid, acq.Key, a.Token)
							break
						}
						time.Sleep(15 * time.Millisecond)
					}
				}
				r.release(holder, hid, acq.Key, acq.Token)
			})
		}
		wg.Wait()
		if ctx.Err() == nil {
			r.sleepUntil(ctx, r.rec.now()+100*time.Millisecond)
		}
	}
}

// manyFences fences one key by n distinct locks (names padded to pad
// bytes when pad > 0), one after another, each under a fresh token. After
// the first refusal it tries five more locks (they must keep being
// refused or accepted by the same rule); a write with an unknown outcome
// ends the series. Then the key must still take an unfenced put
// (ProbeWritable; retried while the outcome is unknown), and a fenced put
// of the first lock, which the key already carries.
func (r *run) manyFences(c *client.Client, tag string, n, pad int) {
	id := r.edgeID(3)
	key := fmt.Sprintf("%se/%s", r.cfg.Namespace, tag)
	lock := func(i int) string {
		name := fmt.Sprintf("%se/%s/%03d/", r.cfg.Namespace, tag, i)
		if pad > len(name) {
			name += strings.Repeat("x", pad-len(name))
		}
		return name
	}
	refusedAt := -1
	for i := 0; i < n && (refusedAt < 0 || i < refusedAt+6); i++ {
		name := lock(i)
		acq := r.acquire(c, id, name, edgeTTL, 2*time.Second)
		if acq.Outcome != OK {
			continue
		}
		w := r.put(context.Background(), c, id, key, fmt.Sprintf("%s-%d", tag, i), nil, acq.Token, name)
		r.release(c, id, name, acq.Token)
		r.tallyEdge(fmt.Sprintf("fenced put by one of %d locks", n), w)
		if w.Outcome == Unknown {
			break
		}
		if w.Outcome == Failed && refusedAt < 0 {
			refusedAt = i
		}
	}
	for a := range 5 {
		op := r.putTTL(c, id, key, fmt.Sprintf("%s-unfenced-%d", tag, a), nil, 0, "", 0, ProbeWritable)
		r.tallyEdge("unfenced put after many fences", op)
		if op.Outcome != Unknown {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if acq := r.acquire(c, id, lock(0), edgeTTL, 2*time.Second); acq.Outcome == OK {
		w := r.put(context.Background(), c, id, key, tag+"-carried", nil, acq.Token, lock(0))
		r.tallyEdge("fenced put by a lock the key carries", w)
		r.release(c, id, lock(0), acq.Token)
	}
}

// fenceTTLEdges runs bursts of the fence-next-to-TTL scenario on fresh
// keys, each with its own lock: tokens T1 < T2 are taken; T2 writes the
// key; an unfenced put with ttl_ms follows (the API refuses it,
// fenced_key_ttl, because the expiry would erase the fences), and a put
// with both fence and ttl_ms (400 fence_with_ttl); past that TTL's expiry,
// T1 writes the key and must be refused. A fenced put with a token no lock
// issued probes unknown_token on a key of its own.
func (r *run) fenceTTLEdges(ctx context.Context, c *client.Client) {
	id := r.edgeID(3)
	per := max(r.cfg.Edges.Keys/4, 2)
	for round := 0; ctx.Err() == nil; round++ {
		var wg sync.WaitGroup
		for i := range per {
			wg.Go(func() {
				key := fmt.Sprintf("%se/fttl/%d/%d", r.cfg.Namespace, round, i)
				name := fmt.Sprintf("%se/fttl/%d/%d/lock", r.cfg.Namespace, round, i)
				t1 := r.acquire(c, id, name, edgeTTL, 2*time.Second)
				if t1.Outcome != OK {
					return
				}
				r.release(c, id, name, t1.Token)
				t2 := r.acquire(c, id, name, edgeTTL, 2*time.Second)
				if t2.Outcome != OK {
					return
				}
				w2 := r.put(context.Background(), c, id, key, fmt.Sprintf("t2-%d-%d", round, i), nil, t2.Token, name)
				r.release(c, id, name, t2.Token)
				if w2.Outcome != OK {
					return
				}
				tp := r.putTTL(c, id, key, fmt.Sprintf("ttl-%d-%d", round, i), nil, 0, "", edgeTTL, "")
				r.tallyEdge("put with ttl_ms on a fenced key", tp)
				fp := r.putTTL(c, id, key, fmt.Sprintf("fttl-%d-%d", round, i), nil, t2.Token, name, edgeTTL, "")
				r.tallyEdge("put with fence and ttl_ms", fp)
				r.sleepUntil(context.Background(), max(tp.Return, fp.Return)+ceilSecond(edgeTTL)+settle+250*time.Millisecond)
				stale := r.put(context.Background(), c, id, key, fmt.Sprintf("t1-%d-%d", round, i), nil, t1.Token, name)
				r.tallyEdge("older token after a TTL's expiry", stale)
				r.get(c, id, key, KindGet)
				u := r.put(context.Background(), c, id, key+"/unissued", fmt.Sprintf("u-%d-%d", round, i), nil, unissuedToken+uint64(round), name)
				r.tallyEdge("fence with a never-issued token", u)
			})
		}
		wg.Wait()
	}
}

// checkFenceRules names the breaches of the API's fence rules that the
// edge workloads provoke (porcupine's model holds the same rules; these
// say which write broke which): an acknowledged put with fence and
// ttl_ms; an acknowledged put with ttl_ms on a key that a fenced write had
// been acknowledged on before it began (fences are never erased, so it
// carried them); an acknowledged fenced write of a new lock that made the
// key carry more than 32 locks counting only fenced writes acknowledged
// before it began; and an acknowledged fence with a never-issued token.
func checkFenceRules(ops []Op) []Violation {
	type fenced struct {
		lock string
		ret  time.Duration
	}
	byKey := map[string][]fenced{}
	for _, op := range ops {
		if (op.Kind == KindPut || op.Kind == KindDel) && op.Token != 0 && op.Outcome == OK {
			byKey[op.Key] = append(byKey[op.Key], fenced{op.Lock, op.Return})
		}
	}
	var vs []Violation
	for _, op := range ops {
		if op.Outcome != OK || (op.Kind != KindPut && op.Kind != KindDel) {
			continue
		}
		switch {
		case op.Token >= unissuedToken:
			vs = append(vs, Violation{CheckFenceRules, fmt.Sprintf("key %q: %s fenced with token %d, which no lock issued, was accepted at %s (want 400 unknown_token)",
				op.Key, op.Kind, op.Token, at(op))})
			continue
		case op.TTL > 0 && op.Token != 0:
			vs = append(vs, Violation{CheckFenceRules, fmt.Sprintf("key %q: put with both fence and ttl_ms accepted at %s (want 400 fence_with_ttl)", op.Key, at(op))})
			continue
		}
		locks := map[string]bool{}
		for _, f := range byKey[op.Key] {
			if f.ret < op.Call {
				locks[f.lock] = true
			}
		}
		switch {
		case op.TTL > 0 && len(locks) > 0:
			vs = append(vs, Violation{CheckFenceRules, fmt.Sprintf("key %q: put with ttl_ms accepted at %s although the key carried fences of %d lock(s) (want 409 fenced_key_ttl)",
				op.Key, at(op), len(locks))})
		case op.Token != 0 && !locks[op.Lock] && len(locks)+1 > 32:
			vs = append(vs, Violation{CheckFenceRules, fmt.Sprintf("key %q: fenced %s of a new lock accepted at %s, making the key carry %d locks (want 409 too_many_fences beyond 32)",
				op.Key, op.Kind, at(op), len(locks)+1)})
		}
	}
	return vs
}

// checkWritable checks that a key fenced by many locks stayed writable:
// of its ProbeWritable puts (retried while their outcome was unknown), one
// must have succeeded.
func checkWritable(ops []Op) []Violation {
	type probes struct {
		n, ok   int
		reasons []string
		first   Op
	}
	byKey := map[string]*probes{}
	var order []string
	for _, op := range ops {
		if op.Probe != ProbeWritable {
			continue
		}
		p := byKey[op.Key]
		if p == nil {
			p = &probes{first: op}
			byKey[op.Key] = p
			order = append(order, op.Key)
		}
		p.n++
		if op.Outcome == OK {
			p.ok++
		} else {
			p.reasons = append(p.reasons, op.Outcome.String()+" "+op.Reason)
		}
	}
	var vs []Violation
	for _, k := range order {
		if p := byKey[k]; p.ok == 0 {
			vs = append(vs, Violation{CheckWritable, fmt.Sprintf("key %q became unwritable after fenced writes by many locks: %d unfenced put(s) from %s on all failed (%s)",
				k, p.n, at(p.first), strings.Join(p.reasons, "; "))})
		}
	}
	return vs
}
