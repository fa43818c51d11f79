// Package kvmodel is the sequential specification of latchkey's key-value
// API, as a porcupine model: a history of concurrent gets, puts,
// compare-and-set puts and deletes is linearizable when some total order of
// the operations, consistent with real time, replays against this model.
//
// Writes whose outcome the client does not know (timeout, 503 after the
// request left) are "may have happened": the model branches on them.
//
// Fenced writes are modelled too: the state of a key carries the highest
// fencing token it was written or deleted under, and a fenced write with a
// lower token must be refused (409) and change nothing, while one with an
// equal or higher token must not be refused for its fence. A history must
// fence each key with one lock only (the checker's workload does), so one
// token per key is the whole fence state.
package kvmodel

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// Op kinds.
const (
	Get = "get"
	Put = "put"
	CAS = "cas" // put with expected_revision; Expected 0 means "if absent"
	Del = "del"
)

// Input is one operation as invoked.
type Input struct {
	Op       string
	Key      string
	Value    string // put/cas: unique per write, so a read names its write
	Expected uint64 // cas only
	Fence    uint64 // put, cas, del: the fencing token sent, 0 = unfenced
}

// Output is what the client saw.
type Output struct {
	Unknown  bool   // no definite answer: the write may or may not have happened
	Conflict bool   // 409: the precondition did not hold, nothing changed
	Found    bool   // get: key present; del: deleted
	Value    string // get
	Rev      uint64 // get, put, cas: the revision returned
}

// state of one key. rev 0 with exists set means "revision not yet known"
// (after a write whose reply was lost). fence is the highest token the key
// was written under; it survives deletes.
type state struct {
	exists bool
	value  string
	rev    uint64
	fence  uint64
}

// fenceOK says whether a write with token t passes the fence of s, and the
// fence the key carries if it is written.
func fenceOK(s state, t uint64) (ok bool, raised uint64) {
	if t == 0 {
		return true, s.fence
	}
	return t >= s.fence, max(t, s.fence)
}

func step(s0 any, in0 any, out0 any) []any {
	s, in, out := s0.(state), in0.(Input), out0.(Output)
	switch in.Op {
	case Get:
		if out.Unknown {
			return []any{s}
		}
		if !out.Found {
			if s.exists {
				return nil
			}
			return []any{s}
		}
		if !s.exists || s.value != out.Value || (s.rev != 0 && s.rev != out.Rev) {
			return nil
		}
		return []any{state{true, s.value, out.Rev, s.fence}}
	case Put, CAS:
		fok, raised := fenceOK(s, in.Fence)
		written := state{true, in.Value, out.Rev, raised}
		holds, maybe := true, false
		if in.Op == CAS {
			holds, maybe = precondition(s, in.Expected)
		}
		if !fok {
			holds, maybe = false, false
		}
		switch {
		case out.Unknown:
			if holds || maybe {
				return []any{s, state{true, in.Value, 0, raised}}
			}
			return []any{s}
		case out.Conflict:
			if holds && !maybe {
				return nil
			}
			return []any{s}
		}
		if !holds && !maybe {
			return nil
		}
		if s.exists && s.rev != 0 && out.Rev <= s.rev {
			return nil // revisions only grow
		}
		return []any{written}
	case Del:
		fok, raised := fenceOK(s, in.Fence)
		absent := state{fence: raised}
		switch {
		case !fok:
			// A stale token: refused, whatever the key holds.
			if out.Unknown || out.Conflict {
				return []any{s}
			}
			return nil
		case out.Conflict:
			return nil
		case out.Unknown:
			return []any{s, absent}
		case out.Found:
			if !s.exists {
				return nil
			}
			return []any{absent}
		default:
			if s.exists {
				return nil
			}
			// A fenced delete of an absent key still records its token.
			return []any{absent}
		}
	}
	panic("kvmodel: unknown op " + in.Op)
}

// precondition says whether a CAS with expected revision e holds in s, and
// whether that is uncertain (the revision of s is not known).
func precondition(s state, e uint64) (holds, maybe bool) {
	if e == 0 {
		return !s.exists, false
	}
	if !s.exists {
		return false, false
	}
	if s.rev == 0 {
		return false, true
	}
	return s.rev == e, false
}

// Model returns the porcupine model, partitioned by key.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var order []string
			for _, op := range h {
				k := op.Input.(Input).Key
				if _, ok := byKey[k]; !ok {
					order = append(order, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(order))
			for _, k := range order {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() []any { return []any{state{}} },
		Step: step,
		DescribeOperation: func(in0, out0 any) string {
			in, out := in0.(Input), out0.(Output)
			res := "ok"
			switch {
			case out.Unknown:
				res = "unknown"
			case out.Conflict:
				res = "conflict"
			case in.Op == Get && out.Found:
				res = fmt.Sprintf("%q@%d", out.Value, out.Rev)
			case in.Op == Get:
				res = "absent"
			case in.Op == Del:
				res = fmt.Sprintf("deleted=%v", out.Found)
			default:
				res = fmt.Sprintf("rev %d", out.Rev)
			}
			fence := ""
			if in.Fence != 0 {
				fence = fmt.Sprintf(" fence %d", in.Fence)
			}
			switch in.Op {
			case Put:
				return fmt.Sprintf("put(%q%s) -> %s", in.Value, fence, res)
			case CAS:
				return fmt.Sprintf("cas(%q if rev %d%s) -> %s", in.Value, in.Expected, fence, res)
			}
			return fmt.Sprintf("%s%s -> %s", in.Op, fence, res)
		},
		DescribeState: func(s0 any) string {
			s := s0.(state)
			fence := ""
			if s.fence != 0 {
				fence = fmt.Sprintf(" fence %d", s.fence)
			}
			if !s.exists {
				return "absent" + fence
			}
			return fmt.Sprintf("%q@%d%s", s.value, s.rev, fence)
		},
	}
	return nm.ToModel()
}
