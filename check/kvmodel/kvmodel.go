// Package kvmodel is the sequential specification of latchkey's key-value
// API, as a porcupine model: a history of concurrent gets, puts,
// compare-and-set puts and deletes is linearizable when some total order of
// the operations, consistent with real time, replays against this model.
//
// Writes whose outcome the client does not know (timeout, 503 after the
// request left) are "may have happened": the model branches on them.
//
// Fenced writes are modelled too: the state of a key carries, per lock, the
// highest fencing token it was written or deleted under; a fenced write
// with a lower token of that lock must be refused (409) and change nothing,
// while one with an equal or higher token must not be refused for its
// fence. Fences survive unfenced writes, deletes and expiries. The API's
// bounds on fences are in the model as well (see fenceBounds), and so are
// its TTL rules: a put with ttl_ms on a key that carries fences must be
// refused (fenced_key_ttl), a put with both fence and ttl_ms must never be
// acknowledged (fence_with_ttl).
//
// TTL expiry is a step of the model: the history holds, for every put with
// ttl_ms that may have happened, an Expire operation of that put's value
// whose invocation and return bound when the server may remove it (the
// checker derives them from the put's own times, the TTL rounded up to
// whole seconds and the server's expiry tick). Linearized while the key
// still holds that value, Expire removes it; linearized later, it is a
// no-op. So a value may vanish only inside its expiry window, must have
// vanished by the window's end unless overwritten, and a write that
// replaced it is never removed by it: exactly the promise an expiry marker
// that swallows an acknowledged write breaks.
package kvmodel

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Op kinds.
const (
	Get = "get"
	Put = "put"
	CAS = "cas" // put with expected_revision; Expected 0 means "if absent"
	Del = "del"
	// Expire is the server removing the value Value written by a put with
	// ttl_ms (see the package comment).
	Expire = "expire"
)

// The API's bounds on the fences one key carries.
const (
	MaxFenceLocks = 32
	MaxFenceBytes = 8 << 10
)

// Input is one operation as invoked.
type Input struct {
	Op       string
	Key      string
	Value    string // put/cas: unique per write, so a read names its write; expire: the put's value
	Expected uint64 // cas only
	Fence    uint64 // put, cas, del: the fencing token sent, 0 = unfenced
	// Lock is the lock of Fence. Histories that fence each key with one
	// lock may leave it empty.
	Lock string
	// TTL is a put's ttl_ms; 0 = none.
	TTL time.Duration
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
// (after a write whose reply was lost). fences is the highest token per
// lock the key was written under (encoded by fenceSet.String, so states
// stay comparable with ==); it survives deletes and expiries.
type state struct {
	exists bool
	value  string
	rev    uint64
	fences string
}

// fenceSet is a key's fences, sorted by lock.
type fenceSet []fence

type fence struct {
	lock  string
	token uint64
}

// String encodes the set as "<len>:<lock><token>;" per entry: unambiguous
// whatever characters lock names hold.
func (fs fenceSet) String() string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(strconv.Itoa(len(f.lock)))
		b.WriteByte(':')
		b.WriteString(f.lock)
		b.WriteString(strconv.FormatUint(f.token, 10))
		b.WriteByte(';')
	}
	return b.String()
}

func parseFences(s string) fenceSet {
	var fs fenceSet
	for s != "" {
		i := strings.IndexByte(s, ':')
		n, _ := strconv.Atoi(s[:i])
		lock := s[i+1 : i+1+n]
		s = s[i+1+n:]
		j := strings.IndexByte(s, ';')
		t, _ := strconv.ParseUint(s[:j], 10, 64)
		fs = append(fs, fence{lock, t})
		s = s[j+1:]
	}
	return fs
}

func (fs fenceSet) find(lock string) (int, bool) {
	return slices.BinarySearchFunc(fs, lock, func(f fence, l string) int { return strings.Compare(f.lock, l) })
}

// fenceWrite applies a write's fence (lock, token t; t 0 = unfenced) to
// the stored fences. stale: the token is below the one stored for its lock
// (must be refused). must/may: the write would grow the key's fences past
// the API's bounds and must / may be refused with too_many_fences (see
// fenceBounds). raised is the encoded set the key carries if it is written.
func fenceWrite(stored, lock string, t uint64) (stale, must, may bool, raised string) {
	if t == 0 {
		return false, false, false, stored
	}
	fs := parseFences(stored)
	i, found := fs.find(lock)
	if found {
		if t < fs[i].token {
			return true, false, false, stored
		}
		next := slices.Clone(fs)
		next[i].token = t
		// A lock the key already carries stays writable whatever the
		// bounds: the API promises it.
		return false, false, false, next.String()
	}
	next := slices.Insert(slices.Clone(fs), i, fence{lock, t})
	must, may = fenceBounds(next)
	return false, must, may, next.String()
}

// fenceBounds says whether a key carrying fs breaks the API's bounds (more
// than MaxFenceLocks locks or more than MaxFenceBytes of fences) for
// certain, or perhaps. The count is exact. The byte size depends on how the
// service measures its stored fences, which the API does not say; so
// "certainly over" uses a measure no encoding can undercut (the lock
// names' bytes alone), and "perhaps over" one that no
// plausible encoding exceeds (a protobuf map entry's name plus 20 bytes of
// tags, lengths and varint, then base64). Between the two a refusal and
// an acceptance are both legitimate.
func fenceBounds(fs fenceSet) (must, may bool) {
	if len(fs) > MaxFenceLocks {
		return true, true
	}
	low, high := 0, 0
	for _, f := range fs {
		low += len(f.lock)
		high += len(f.lock) + 20
	}
	high = (high + 2) / 3 * 4
	return low > MaxFenceBytes, high > MaxFenceBytes
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
		return []any{state{true, s.value, out.Rev, s.fences}}
	case Expire:
		if s.exists && s.value == in.Value {
			return []any{state{fences: s.fences}}
		}
		return []any{s}
	case Put, CAS:
		stale, must, may, raised := fenceWrite(s.fences, in.Lock, in.Fence)
		// refused: the API requires a refusal; mayRefuse: it allows one.
		refused := stale || must ||
			(in.TTL > 0 && s.fences != "") || // fenced_key_ttl
			(in.TTL > 0 && in.Fence != 0) // fence_with_ttl
		written := state{true, in.Value, out.Rev, raised}
		holds, maybe := true, false
		if in.Op == CAS {
			holds, maybe = precondition(s, in.Expected)
		}
		switch {
		case out.Unknown:
			if !refused && (holds || maybe) {
				return []any{s, state{true, in.Value, 0, raised}}
			}
			return []any{s}
		case out.Conflict:
			if holds && !maybe && !refused && !may {
				return nil
			}
			return []any{s}
		}
		if refused || (!holds && !maybe) {
			return nil
		}
		if s.exists && s.rev != 0 && out.Rev <= s.rev {
			return nil // revisions only grow
		}
		return []any{written}
	case Del:
		stale, must, may, raised := fenceWrite(s.fences, in.Lock, in.Fence)
		absent := state{fences: raised}
		switch {
		case stale || must:
			// Refused, whatever the key holds.
			if out.Unknown || out.Conflict {
				return []any{s}
			}
			return nil
		case out.Conflict:
			if may {
				return []any{s}
			}
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
			case in.Op == Expire:
				res = "expiry window"
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
				fence = fmt.Sprintf(" fence %s:%d", short(in.Lock), in.Fence)
			}
			if in.TTL > 0 {
				fence += fmt.Sprintf(" ttl %s", in.TTL)
			}
			switch in.Op {
			case Expire:
				return fmt.Sprintf("expire(%q) -> %s", in.Value, res)
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
			if fs := parseFences(s.fences); len(fs) > 0 {
				fence = fmt.Sprintf(" fences of %d lock(s)", len(fs))
				if len(fs) <= 3 {
					var parts []string
					for _, f := range fs {
						parts = append(parts, fmt.Sprintf("%s:%d", short(f.lock), f.token))
					}
					fence = " fences " + strings.Join(parts, ",")
				}
			}
			if !s.exists {
				return "absent" + fence
			}
			return fmt.Sprintf("%q@%d%s", s.value, s.rev, fence)
		},
	}
	return nm.ToModel()
}

// short abbreviates a (possibly very long) lock name for the visualisation.
func short(lock string) string {
	if len(lock) > 24 {
		return lock[:10] + "…" + lock[len(lock)-10:]
	}
	return lock
}
