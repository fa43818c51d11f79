package check

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/latchkey/latchkey/check/kvmodel"
	"github.com/latchkey/latchkey/kit/apierr"
)

// Checks, as named in violations.
const (
	CheckLinearizable = "linearizability"
	CheckStale        = "stale-read"
	CheckScan         = "scan"
	CheckLockOverlap  = "lock-overlap"
	CheckLockToken    = "lock-token"
	CheckFence        = "fence"
	CheckDurability   = "durability"
	CheckTTL          = "ttl"
	CheckFenceRules   = "fence-rules"
	CheckWritable     = "writable"
)

// AllChecks lists every check in the order the report prints them.
var AllChecks = []string{CheckLinearizable, CheckStale, CheckScan, CheckLockOverlap, CheckLockToken, CheckFence,
	CheckFenceRules, CheckWritable, CheckDurability, CheckTTL}

// Violation is one failed check.
type Violation struct {
	Check  string
	Detail string
}

func (v Violation) String() string { return v.Check + ": " + v.Detail }

// forever is the return time of a write whose outcome is unknown: it may
// take effect at any later time.
const forever = int64(1) << 62

// verify runs every check on the recorded history.
func (r *run) verify(trafficEnd time.Duration, sched Schedule) *Report {
	ops := r.rec.snapshot()
	r.faultMu.Lock()
	faults := append([]FaultRecord(nil), r.faults...)
	r.faultMu.Unlock()
	rep := &Report{Schedule: sched, Faults: faults, Duration: trafficEnd, Clients: r.cfg.Clients, Keys: len(r.keys), Locks: len(r.lks)}
	rep.tally(ops, trafficEnd)
	began := time.Now()
	r.checkLinearizable(ops, rep)
	rep.Violations = append(rep.Violations, r.checkStale(ops, rep)...)
	rep.Violations = append(rep.Violations, r.checkScans(ops)...)
	rep.Violations = append(rep.Violations, checkLockOverlap(ops)...)
	rep.Violations = append(rep.Violations, checkTokens(ops)...)
	rep.Violations = append(rep.Violations, checkFences(ops)...)
	rep.Violations = append(rep.Violations, r.checkDurability(ops)...)
	rep.Violations = append(rep.Violations, checkTTL(ops, faults)...)
	rep.Violations = append(rep.Violations, checkFenceRules(ops)...)
	rep.Violations = append(rep.Violations, checkWritable(ops)...)
	if r.cfg.Watch {
		rep.Watch = fmt.Sprintf("%d events", len(r.watchEvents))
		rep.Violations = append(rep.Violations, checkWatch(ops, r.watchEvents, r.watchErr)...)
	}
	rep.CheckTime = time.Since(began)
	rep.ByFaultKind = byFaultKind(ops, faults, trafficEnd, rep.Violations)
	return rep
}

// history converts the key-value operations to porcupine's form. Scans
// become one read per key of the range they cover: the storage service
// answers a scan from a view that has applied every write acknowledged
// before the scan began, and the view is a consistent cut of the stream
// taken while the scan ran, so each key in it is a linearizable read.
// Reads without an answer carry no information and are left out; writes
// refused for another reason than 409 (a 400: the checker's own mistake,
// or a rule such as unknown_token or fence_with_ttl) changed nothing and
// are left out too.
//
// Every put with ttl_ms that may have happened brings an Expire step (see
// kvmodel): the server may remove its value no earlier than the put's
// invocation plus the TTL rounded up to whole seconds (the server rounds
// up, and it stores the message no earlier than the invocation), and must
// have removed it, unless it was overwritten, by the put's return plus the
// rounded TTL plus ttlSlack (the expiry timer's tick, the marker's
// replication and a busy machine), later when a fault overlapped that
// wait (expiresBy). A put whose outcome is unknown may take
// effect at any later time, so its expiry may too.
//
// The mode narrows what writes of unknown outcome may do, for the quicker
// searches of checkLinearizable: histPrune leaves out those whose value no
// read ever returned, histBound lets each take effect only until
// unknownBound after its own return.
func (r *run) history(ops []Op, faults []FaultRecord, mode histMode) []porcupine.Operation {
	expirer := r.cfg.Clients + 3 + edgeClients // the server, in the visualisation
	var seen map[string]bool
	if mode == histPrune {
		seen = observedValues(ops)
	}
	var h []porcupine.Operation
	add := func(op Op, in kvmodel.Input, out kvmodel.Output) {
		ret := int64(op.Return)
		if out.Unknown {
			ret = forever
			if mode == histBound {
				ret = int64(unknownBound(op, faults))
			}
		}
		h = append(h, porcupine.Operation{ClientId: op.Client, Call: int64(op.Call), Return: ret, Input: in, Output: out})
	}
	for _, op := range ops {
		switch op.Kind {
		case KindGet, KindFinalGet, KindTTLGet:
			if op.Outcome == OK {
				add(op, kvmodel.Input{Op: kvmodel.Get, Key: op.Key}, kvmodel.Output{Found: op.Found, Value: op.Result, Rev: op.Rev})
			}
		case KindPut, KindCAS, KindDel, KindTTLPut:
			if op.Invalid || undelivered(op) {
				continue
			}
			if mode == histPrune && op.Outcome == Unknown && op.Kind != KindDel && !seen[op.Value] {
				continue
			}
			in := kvmodel.Input{Op: kvmodel.Put, Key: op.Key, Value: op.Value, Fence: op.Token, Lock: op.Lock, TTL: op.TTL}
			switch op.Kind {
			case KindCAS:
				in.Op, in.Expected = kvmodel.CAS, op.Expected
			case KindDel:
				in.Op = kvmodel.Del
			}
			out := kvmodel.Output{Unknown: op.Outcome == Unknown, Conflict: op.Outcome == Failed, Rev: op.Rev, Found: op.Found}
			if in.Op == kvmodel.Del {
				out.Rev = 0
			}
			add(op, in, out)
			if op.TTL > 0 && op.Outcome != Failed {
				ret := int64(expiresBy(op, faults))
				if op.Outcome == Unknown {
					ret = forever
					if mode == histBound {
						late := op
						late.Return = unknownBound(op, faults)
						ret = int64(expiresBy(late, faults))
					}
				}
				h = append(h, porcupine.Operation{ClientId: expirer, Call: int64(op.Call + ceilSecond(op.TTL)), Return: ret,
					Input: kvmodel.Input{Op: kvmodel.Expire, Key: op.Key, Value: op.Value}, Output: kvmodel.Output{}})
			}
		case KindScan:
			if op.Outcome != OK {
				continue
			}
			items := map[string]Item{}
			for _, it := range op.Items {
				items[it.Key] = it
			}
			for _, key := range r.scanRange(op) {
				it, found := items[key]
				add(op, kvmodel.Input{Op: kvmodel.Get, Key: key}, kvmodel.Output{Found: found, Value: it.Value, Rev: it.Rev})
			}
		}
	}
	return h
}

// scanRange lists the workload's keys a successful scan answered for:
// those with its prefix after its start key, up to its last item when more
// keys follow.
func (r *run) scanRange(op Op) []string {
	if op.More && len(op.Items) == 0 {
		return nil // answers for no key; checkScans reports the page
	}
	var out []string
	for _, key := range r.keys {
		if !strings.HasPrefix(key, op.Prefix) || (op.After != "" && key <= op.After) {
			continue
		}
		if op.More && len(op.Items) > 0 && key > op.Items[len(op.Items)-1].Key {
			continue
		}
		out = append(out, key)
	}
	return out
}

// histMode selects how history treats writes of unknown outcome.
type histMode int

const (
	histFull  histMode = iota // each may take effect at any later time
	histPrune                 // those no read saw are left out
	histBound                 // each takes effect by unknownBound or never
)

// unknownWindow and unknownHealWindow bound, for the histBound search
// only, how late a write of unknown outcome takes effect: a few seconds
// after its error came back, or after the heal of a fault that overlapped
// that time (a write held by a frozen or cut-off leader lands when it
// returns). Nothing promises this bound; a history linearizable within it
// is linearizable, one that is not is searched again without it.
const (
	unknownWindow     = 5 * time.Second
	unknownHealWindow = 10 * time.Second
)

func unknownBound(op Op, faults []FaultRecord) time.Duration {
	by := op.Return + unknownWindow
	for _, f := range faults {
		if f.Injected < by && f.Healed > op.Call && f.Healed+unknownHealWindow > by {
			by = f.Healed + unknownHealWindow
		}
	}
	return by
}

// undelivered says whether op's request reached no service at all: the
// client's own NATS request was answered "no responders" (nothing
// subscribed to the endpoint, e.g. the only router was down), so it changed
// nothing although the client counts it unknown. No service replies with
// that reason (the router turns a shard's "no responders" into
// shard_unavailable), so the reason names the client's transport error.
func undelivered(op Op) bool {
	return op.Outcome == Unknown && op.Reason == string(apierr.ReasonNoResponders)
}

// observedValues is every value some read returned: gets of every kind and
// scan items.
func observedValues(ops []Op) map[string]bool {
	seen := map[string]bool{}
	for _, op := range ops {
		if op.Outcome != OK {
			continue
		}
		if op.Found && op.Result != "" {
			seen[op.Result] = true
		}
		for _, it := range op.Items {
			seen[it.Value] = true
		}
	}
	return seen
}

// checkLinearizable runs porcupine on the key-value history. Writes of
// unknown outcome are the expensive part of the search: each may take
// effect at any later time, so porcupine carries every one not yet placed
// through the rest of the history (a run with hundreds of them around the
// faults once gave up after 2 min). Most of them never took effect, which
// shows: no read ever returned their (unique) value. So the history is
// checked first without those writes, as if they had failed, then with
// every unknown write taking effect soon after its error or never
// (histBound); a linearization of either history is one of the whole
// history too (a left-out write is placed as "not applied", a bounded one
// where it was placed), so "linearizable" is sound. Anything else is
// decided on the whole history.
func (r *run) checkLinearizable(ops []Op, rep *Report) {
	model := kvmodel.Model()
	quick := max(r.cfg.CheckTimeout/4, time.Second)
	pruned := r.history(ops, rep.Faults, histPrune)
	pres, pinfo := porcupine.CheckOperationsVerbose(model, pruned, quick)
	if pres == porcupine.Ok {
		rep.Linearizable = fmt.Sprintf("linearizable (%d operations)", len(pruned))
		return
	}
	bounded := r.history(ops, rep.Faults, histBound)
	bres, binfo := porcupine.CheckOperationsVerbose(model, bounded, quick)
	if bres == porcupine.Ok {
		rep.Linearizable = fmt.Sprintf("linearizable (%d operations)", len(bounded))
		return
	}
	h := r.history(ops, rep.Faults, histFull)
	res, info := porcupine.CheckOperationsVerbose(model, h, r.cfg.CheckTimeout)
	note := ""
	if res == porcupine.Unknown && bres == porcupine.Illegal {
		// Only unknown writes taking effect late could explain the
		// history, and the search through them gave up: name the keys
		// and show the history with the writes bounded.
		res, info, h = porcupine.Illegal, binfo, bounded
		note = fmt.Sprintf(" (with every unknown write taking effect within %s of its error, or %s of a fault's heal; without that bound, porcupine gave up)",
			unknownWindow, unknownHealWindow)
	} else if res == porcupine.Unknown && pres == porcupine.Illegal {
		res, info, h = porcupine.Illegal, pinfo, pruned
		note = " (unless unknown writes that no read saw took effect; with them, porcupine gave up)"
	}
	switch res {
	case porcupine.Ok:
		rep.Linearizable = fmt.Sprintf("linearizable (%d operations)", len(h))
		return
	case porcupine.Unknown:
		rep.Linearizable = fmt.Sprintf("inconclusive: porcupine gave up after %s (%d operations)", r.cfg.CheckTimeout, len(h))
		// A check that could not decide proved nothing: a failure, not a pass.
		rep.Violations = append(rep.Violations, Violation{CheckLinearizable, rep.Linearizable})
		return
	}
	rep.Linearizable = fmt.Sprintf("NOT linearizable (%d operations)%s", len(h), note)
	// Name the keys whose histories fail, each checked on its own.
	byKey := map[string][]porcupine.Operation{}
	for _, op := range h {
		k := op.Input.(kvmodel.Input).Key
		byKey[k] = append(byKey[k], op)
	}
	var bad []string
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	// One budget for all keys, not CheckTimeout each: a long faulty run
	// otherwise spends up to keys x CheckTimeout naming them (16 min seen).
	perKey := max(5*time.Second, r.cfg.CheckTimeout/time.Duration(max(len(keys), 1)))
	for _, k := range keys {
		if porcupine.CheckOperationsTimeout(model, byKey[k], perKey) == porcupine.Illegal {
			bad = append(bad, k)
		}
	}
	var notes []porcupine.Annotation
	for _, f := range rep.Faults {
		notes = append(notes, porcupine.Annotation{Tag: "faults", Start: int64(f.Injected), End: int64(f.Healed),
			Description: f.Fault.String(), Details: f.Note, BackgroundColor: "#fdd"})
	}
	info.AddAnnotations(notes)
	dir := r.cfg.OutDir
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("latchkey-check-%d.html", r.cfg.Seed))
	if err := porcupine.VisualizePath(model, info, path); err == nil {
		rep.Visualisation = path
	} else {
		path = "(could not write the visualisation: " + err.Error() + ")"
	}
	rep.Violations = append(rep.Violations, Violation{CheckLinearizable,
		fmt.Sprintf("no linearization of the history of key(s) %s; visualisation: %s", strings.Join(bad, ", "), path)})
}

// keyWrites indexes the writes of each key that may have happened.
type keyWrites struct {
	byValue map[string]Op // puts and CAS puts by their unique value
	changes []Op          // acknowledged changes with their revision, by revision
	dels    []Op          // deletes that may have deleted (ok with deleted, or unknown)
}

func indexWrites(ops []Op) map[string]*keyWrites {
	idx := map[string]*keyWrites{}
	get := func(k string) *keyWrites {
		w := idx[k]
		if w == nil {
			w = &keyWrites{byValue: map[string]Op{}}
			idx[k] = w
		}
		return w
	}
	for _, op := range ops {
		if op.Outcome == Failed {
			continue
		}
		switch op.Kind {
		case KindPut, KindCAS, KindTTLPut:
			w := get(op.Key)
			w.byValue[op.Value] = op
			if op.Outcome == OK {
				w.changes = append(w.changes, op)
			}
		case KindDel:
			w := get(op.Key)
			if op.Outcome == Unknown || op.Found {
				w.dels = append(w.dels, op)
			}
			if op.Outcome == OK && op.Found {
				w.changes = append(w.changes, op)
			}
		}
	}
	for _, w := range idx {
		slices.SortFunc(w.changes, func(a, b Op) int { return cmp.Compare(a.Rev, b.Rev) })
	}
	return idx
}

// checkStale checks stale gets against what the docs promise them: a
// stale get answers from a storage instance's view, which applies the
// stream in order and refuses stale reads once it has lost contact with
// its stream for a few seconds. So a stale get returns a value that was
// really written (by a put invoked before the get returned, with that
// put's revision), or absent; and it is not older than StaleBound: it
// misses no write acknowledged more than StaleBound before it began.
// Stale gets are not promised to be monotonic across gets (two instances
// may serve them), so that is not checked.
//
// It also measures the lag: for a stale get that missed acknowledged
// changes, how long before the get the first of them was acknowledged.
func (r *run) checkStale(ops []Op, rep *Report) []Violation {
	idx := indexWrites(ops)
	bound := r.cfg.StaleBound
	var vs []Violation
	for _, op := range ops {
		if op.Kind != KindStaleGet || op.Outcome != OK {
			continue
		}
		w := idx[op.Key]
		if w == nil {
			w = &keyWrites{byValue: map[string]Op{}}
		}
		// The newest acknowledged change the read must not be older than.
		var floor *Op
		for i := range w.changes {
			if w.changes[i].Return < op.Call-bound {
				if floor == nil || w.changes[i].Rev > floor.Rev {
					floor = &w.changes[i]
				}
			}
		}
		if op.Found {
			src, ok := w.byValue[op.Result]
			switch {
			case !ok:
				vs = append(vs, Violation{CheckStale, fmt.Sprintf("stale get of %q at %s returned %q, which no put wrote", op.Key, at(op), op.Result)})
				continue
			case src.Call > op.Return:
				vs = append(vs, Violation{CheckStale, fmt.Sprintf("stale get of %q at %s returned %q, written by a put invoked only at %.3fs", op.Key, at(op), op.Result, src.Call.Seconds())})
				continue
			case src.Outcome == OK && src.Rev != op.Rev:
				vs = append(vs, Violation{CheckStale, fmt.Sprintf("stale get of %q at %s returned %q at revision %d; the put was acknowledged with revision %d", op.Key, at(op), op.Result, op.Rev, src.Rev)})
				continue
			}
			missed := time.Duration(-1)
			var first Op
			for _, c := range w.changes {
				if c.Rev > op.Rev && c.Return < op.Call && op.Call-c.Return > missed {
					missed, first = op.Call-c.Return, c
				}
			}
			if missed >= 0 {
				rep.StaleBehind++
				if missed > rep.StaleMaxLag {
					rep.StaleMaxLag, rep.StaleMaxLagAt, rep.StaleMaxLagMissed = missed, op, first
				}
			}
			if floor != nil && floor.Rev > op.Rev {
				vs = append(vs, Violation{CheckStale, fmt.Sprintf("stale get of %q at %s returned revision %d, older than revision %d acknowledged at %.3fs, more than %s before the read",
					op.Key, at(op), op.Rev, floor.Rev, floor.Return.Seconds(), bound)})
			}
			continue
		}
		if floor == nil || floor.Kind == KindDel {
			continue
		}
		// Absent although a put was acknowledged long before: some delete
		// must have come after it.
		deleted := false
		for _, d := range w.dels {
			if d.Call < op.Return && (d.Outcome == Unknown || d.Rev > floor.Rev) {
				deleted = true
				break
			}
		}
		if !deleted {
			vs = append(vs, Violation{CheckStale, fmt.Sprintf("stale get of %q at %s found nothing, but %q was acknowledged at %.3fs (revision %d), more than %s before, and no delete followed",
				op.Key, at(op), floor.Value, floor.Return.Seconds(), floor.Rev, bound)})
		}
	}
	return vs
}

func at(op Op) string { return fmt.Sprintf("%.3fs-%.3fs", op.Call.Seconds(), op.Return.Seconds()) }

// checkScans checks each page's own rules: keys strictly ascending (so
// no duplicates), every key with the prefix and after the start key, at
// most limit items, and every item a value some put wrote, with that
// put's revision when it was acknowledged.
func (r *run) checkScans(ops []Op) []Violation {
	idx := indexWrites(ops)
	var vs []Violation
	for _, op := range ops {
		if op.Kind != KindScan || op.Outcome != OK {
			continue
		}
		bad := func(format string, args ...any) {
			vs = append(vs, Violation{CheckScan, fmt.Sprintf("scan %q after %q limit %d at %s: ", op.Prefix, op.After, op.Limit, at(op)) + fmt.Sprintf(format, args...)})
		}
		if len(op.Items) > op.Limit {
			bad("%d items", len(op.Items))
		}
		if op.More && len(op.Items) == 0 {
			bad("an empty page claims more keys")
		}
		for i, it := range op.Items {
			if i > 0 && it.Key <= op.Items[i-1].Key {
				bad("%q follows %q: not strictly ascending", it.Key, op.Items[i-1].Key)
			}
			if !strings.HasPrefix(it.Key, op.Prefix) {
				bad("%q lacks the prefix", it.Key)
			}
			if op.After != "" && it.Key <= op.After {
				bad("%q is not after the start key", it.Key)
			}
			w := idx[it.Key]
			var src Op
			ok := w != nil
			if ok {
				src, ok = w.byValue[it.Value]
			}
			switch {
			case !ok:
				bad("%q holds %q, which no put wrote", it.Key, it.Value)
			case src.Call > op.Return:
				bad("%q holds %q, written by a put invoked after the scan returned", it.Key, it.Value)
			case src.Outcome == OK && src.Rev != it.Rev:
				bad("%q holds %q at revision %d; the put was acknowledged with revision %d", it.Key, it.Value, it.Rev, src.Rev)
			}
		}
	}
	return vs
}

// holder is one lease of a lock as its holder knew it: the intervals in
// which it could rely on holding the lock.
type holder struct {
	client int
	token  uint64
	spans  [][2]time.Duration
}

// checkLockOverlap checks mutual exclusion. A holder may rely on its lease
// from the acquire's acknowledgement until the acquire's invocation plus
// the lease (the grant happened no earlier than the invocation, and a
// lease never ends early); each acknowledged renewal adds the span from its
// acknowledgement to its invocation plus the lease; invoking release ends
// them all. Every time is read from one monotonic clock in this process,
// and the server's clocks only ever make leases longer than this, so two
// holders of one name whose spans overlap held it at once.
func checkLockOverlap(ops []Op) []Violation {
	holders := map[string]map[uint64]*holder{}
	for _, op := range ops {
		if op.Kind == KindAcquire && op.Outcome == OK {
			if holders[op.Key] == nil {
				holders[op.Key] = map[uint64]*holder{}
			}
			if h := holders[op.Key][op.Token]; h != nil {
				continue // a duplicate token: checkTokens reports it
			}
			holders[op.Key][op.Token] = &holder{client: op.Client, token: op.Token, spans: [][2]time.Duration{{op.Return, op.ValidUntil}}}
		}
	}
	for _, op := range ops {
		h := holders[op.Key][op.Token]
		if h == nil {
			continue
		}
		switch {
		case op.Kind == KindRenew && op.Outcome == OK:
			h.spans = append(h.spans, [2]time.Duration{op.Return, op.ValidUntil})
		case op.Kind == KindRelease:
			for i := range h.spans {
				h.spans[i][1] = min(h.spans[i][1], op.Call)
			}
		}
	}
	var vs []Violation
	for name, hs := range holders {
		list := make([]*holder, 0, len(hs))
		for _, h := range hs {
			list = append(list, h)
		}
		slices.SortFunc(list, func(a, b *holder) int { return cmp.Compare(a.token, b.token) })
		for i, a := range list {
			for _, b := range list[i+1:] {
				if s, ok := overlap(a.spans, b.spans); ok {
					vs = append(vs, Violation{CheckLockOverlap, fmt.Sprintf("lock %q: client %d (token %d) and client %d (token %d) both held it during %.3fs-%.3fs",
						name, a.client, a.token, b.client, b.token, s[0].Seconds(), s[1].Seconds())})
				}
			}
		}
	}
	return vs
}

// overlap returns the longest overlap of two holders' spans, so that a
// report names the renewal that was broken rather than a sliver of
// another span.
func overlap(a, b [][2]time.Duration) ([2]time.Duration, bool) {
	var best [2]time.Duration
	found := false
	for _, x := range a {
		for _, y := range b {
			lo, hi := max(x[0], y[0]), min(x[1], y[1])
			if lo < hi && (!found || hi-lo > best[1]-best[0]) {
				best, found = [2]time.Duration{lo, hi}, true
			}
		}
	}
	return best, found
}

// checkTokens checks that every acquire of a name returned a token greater
// than every token an acquire of that name had returned before it was
// invoked (and so that no token is handed out twice).
func checkTokens(ops []Op) []Violation {
	byName := map[string][]Op{}
	for _, op := range ops {
		if op.Kind == KindAcquire && op.Outcome == OK {
			byName[op.Key] = append(byName[op.Key], op)
		}
	}
	var vs []Violation
	for name, acqs := range byName {
		seen := map[uint64]Op{}
		for _, a := range acqs {
			if b, dup := seen[a.Token]; dup {
				vs = append(vs, Violation{CheckLockToken, fmt.Sprintf("lock %q: token %d granted twice (clients %d and %d)", name, a.Token, b.Client, a.Client)})
			}
			seen[a.Token] = a
		}
		vs = append(vs, realTimeOrder(acqs, func(earlier, later Op) string {
			return fmt.Sprintf("lock %q: acquire at %s returned token %d, not above token %d acknowledged at %.3fs",
				name, at(later), later.Token, earlier.Token, earlier.Return.Seconds())
		}, CheckLockToken)...)
	}
	return vs
}

// realTimeOrder reports every op whose token is below the highest token
// of the ops that returned before it was invoked. (Equal tokens are one
// holder writing again, or, for acquires, the duplicate checkTokens
// reports on its own.)
func realTimeOrder(ops []Op, describe func(earlier, later Op) string, check string) []Violation {
	byCall := slices.Clone(ops)
	slices.SortFunc(byCall, func(a, b Op) int { return cmp.Compare(a.Call, b.Call) })
	byReturn := slices.Clone(ops)
	slices.SortFunc(byReturn, func(a, b Op) int { return cmp.Compare(a.Return, b.Return) })
	var vs []Violation
	var best *Op
	j := 0
	for _, op := range byCall {
		for j < len(byReturn) && byReturn[j].Return < op.Call {
			if best == nil || byReturn[j].Token > best.Token {
				best = &byReturn[j]
			}
			j++
		}
		if best != nil && op.Token < best.Token {
			vs = append(vs, Violation{check, describe(*best, op)})
		}
	}
	return vs
}

// checkFences checks that no fenced write was accepted with a token below
// one a fenced write to the same key under the same lock had been
// acknowledged with before it was invoked. (The key keeps its highest
// token per lock, through unfenced writes, deletes and TTL expiries;
// porcupine checks the same rule in full, this names the writes.)
func checkFences(ops []Op) []Violation {
	type keyLock struct{ key, lock string }
	byKey := map[keyLock][]Op{}
	for _, op := range ops {
		if (op.Kind == KindPut || op.Kind == KindDel) && op.Token != 0 && op.Token < unissuedToken && op.Outcome == OK {
			kl := keyLock{op.Key, op.Lock}
			byKey[kl] = append(byKey[kl], op)
		}
	}
	var vs []Violation
	for kl, ws := range byKey {
		key := kl.key
		for _, v := range realTimeOrder(ws, func(earlier, later Op) string {
			return fmt.Sprintf("key %q: %s with token %d by client %d at %s accepted after a %s with token %d was acknowledged at %.3fs",
				key, later.Kind, later.Token, later.Client, at(later), earlier.Kind, earlier.Token, earlier.Return.Seconds())
		}, CheckFence) {
			vs = append(vs, v)
		}
	}
	return vs
}

// lastReads returns, per key, the last successful linearizable read that
// began after every write of the key had returned: the key's final state.
func lastReads(ops []Op) map[string]Op {
	lastWrite := map[string]time.Duration{}
	for _, op := range ops {
		switch op.Kind {
		case KindPut, KindCAS, KindDel, KindTTLPut:
			lastWrite[op.Key] = max(lastWrite[op.Key], op.Return)
		}
	}
	final := map[string]Op{}
	for _, op := range ops {
		switch op.Kind {
		case KindGet, KindFinalGet, KindTTLGet:
			if f, seen := final[op.Key]; op.Outcome == OK && op.Call > lastWrite[op.Key] && (!seen || op.Call > f.Call) {
				final[op.Key] = op
			}
		}
	}
	return final
}

// checkDurability compares the last linearizable read of every key that
// began after every write of that key had returned (for the workload's
// keys, the final reads; for the edge workloads' keys, their read-backs)
// with the acknowledged writes: the newest acknowledged change (by
// revision) must still be there unless a write with an unknown outcome
// replaced it, or it was a put with ttl_ms whose TTL (rounded up) had run
// out before the read began. This is where an acknowledged write swallowed
// by the expiry of the key's previous value shows by name.
func (r *run) checkDurability(ops []Op) []Violation {
	idx := indexWrites(ops)
	final := lastReads(ops)
	keys := make([]string, 0, len(final))
	for k := range final {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var vs []Violation
	for _, key := range keys {
		f := final[key]
		w := idx[key]
		if w == nil || len(w.changes) == 0 {
			continue
		}
		last := w.changes[len(w.changes)-1]
		if f.Found {
			src, known := w.byValue[f.Result]
			switch {
			case f.Rev < last.Rev:
				vs = append(vs, Violation{CheckDurability, fmt.Sprintf("key %q reads revision %d (%q) at %s, but a %s was acknowledged with revision %d at %s: lost",
					key, f.Rev, f.Result, at(f), last.Kind, last.Rev, at(last))})
			case !known:
				vs = append(vs, Violation{CheckDurability, fmt.Sprintf("key %q ends with %q, which no put wrote", key, f.Result)})
			case f.Rev > last.Rev && src.Outcome == OK:
				vs = append(vs, Violation{CheckDurability, fmt.Sprintf("key %q ends at revision %d, above every acknowledged change, yet holds an acknowledged put's value %q (revision %d)", key, f.Rev, f.Result, src.Rev)})
			}
			continue
		}
		if last.Kind == KindDel || (last.TTL > 0 && f.Call >= last.Call+ceilSecond(last.TTL)) {
			continue
		}
		deleted := false
		for _, d := range w.dels {
			if d.Outcome == Unknown || d.Rev > last.Rev {
				deleted = true
				break
			}
		}
		if !deleted {
			vs = append(vs, Violation{CheckDurability, fmt.Sprintf("key %q is absent at %s, but %q was acknowledged with revision %d at %s and no delete followed: lost",
				key, at(f), last.Value, last.Rev, at(last))})
		}
	}
	return vs
}
