// Package kvmodel is the sequential specification of latchkey's key-value
// API, as a porcupine model: a history of concurrent gets, puts,
// compare-and-set puts and deletes is linearizable when some total order of
// the operations, consistent with real time, replays against this model.
//
// Writes whose outcome the client does not know (timeout, 503 after the
// request left) are "may have happened": the model branches on them.
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
// (after a write whose reply was lost).
type state struct {
	exists bool
	value  string
	rev    uint64
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
		return []any{state{true, s.value, out.Rev}}
	case Put, CAS:
		written := state{true, in.Value, out.Rev}
		holds, maybe := true, false
		if in.Op == CAS {
			holds, maybe = precondition(s, in.Expected)
		}
		switch {
		case out.Unknown:
			if holds || maybe {
				return []any{s, state{true, in.Value, 0}}
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
		absent := state{}
		switch {
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
			return []any{s}
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
			switch in.Op {
			case Put:
				return fmt.Sprintf("put(%q) -> %s", in.Value, res)
			case CAS:
				return fmt.Sprintf("cas(%q if rev %d) -> %s", in.Value, in.Expected, res)
			}
			return fmt.Sprintf("%s -> %s", in.Op, res)
		},
		DescribeState: func(s0 any) string {
			s := s0.(state)
			if !s.exists {
				return "absent"
			}
			return fmt.Sprintf("%q@%d", s.value, s.rev)
		},
	}
	return nm.ToModel()
}
