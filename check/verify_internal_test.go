package check

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// unknownHeavy is one key's history shaped like the writes around a
// fault: every client's write times out or finds no responder (outcome
// unknown, value never read), between acknowledged puts each read back.
// With stale, the second last read returns the value before the latest acknowledged
// put: a stale read, which no placement of the unknown writes explains.
func unknownHeavy(rounds int, stale bool) []Op {
	const key = "ns/k00"
	var ops []Op
	at := time.Duration(0)
	step := func() time.Duration { at += time.Millisecond; return at }
	for i := range rounds {
		put := Op{Client: 0, Kind: KindPut, Key: key, Value: fmt.Sprintf("ok-%d", i), Rev: uint64(100 + i)}
		put.Call, put.Return = step(), step()
		ops = append(ops, put)
		for c := 1; c <= 6; c++ {
			reason := "shard_timeout"
			if c%2 == 0 {
				reason = "no_responders"
			}
			u := Op{Client: c, Kind: KindPut, Key: key, Value: fmt.Sprintf("u%d-%d", c, i), Outcome: Unknown, Reason: reason}
			if c == 3 {
				u.Kind, u.Expected = KindCAS, uint64(100+i)
			}
			u.Call, u.Return = step(), step()
			ops = append(ops, u)
		}
		get := Op{Client: 7, Kind: KindGet, Key: key, Found: true, Result: put.Value, Rev: put.Rev}
		if stale && i == rounds-2 {
			get.Result, get.Rev = fmt.Sprintf("ok-%d", i-1), uint64(100+i-1)
		}
		get.Call, get.Return = step(), step()
		ops = append(ops, get)
	}
	return ops
}

// Unknown writes nobody ever read are set aside for the first search
// (checkLinearizable): a history full of them is decided, and setting them
// aside never hides a violation, since anything but "linearizable" is
// decided on the whole history.
func TestLinearizableWithManyUnknownWrites(t *testing.T) {
	for _, stale := range []bool{false, true} {
		r := &run{cfg: Config{Clients: 8, CheckTimeout: 10 * time.Second, OutDir: t.TempDir()}}
		rep := &Report{}
		rounds := 40
		if stale {
			rounds = 3 // the whole history is searched too
		}
		r.checkLinearizable(unknownHeavy(rounds, stale), rep)
		switch {
		case stale && !strings.HasPrefix(rep.Linearizable, "NOT linearizable"):
			t.Errorf("with a stale read: %q; want NOT linearizable", rep.Linearizable)
		case !stale && !strings.HasPrefix(rep.Linearizable, "linearizable"):
			t.Errorf("without: %q; want linearizable", rep.Linearizable)
		}
	}
}

// A write answered "no responders" reached no service: it is no write at
// all, so a read of its value is a violation.
func TestUndeliveredWriteChangedNothing(t *testing.T) {
	ops := []Op{
		{Client: 1, Kind: KindPut, Key: "ns/k00", Value: "ghost", Outcome: Unknown, Reason: "no_responders", Call: 1, Return: 2},
		{Client: 2, Kind: KindGet, Key: "ns/k00", Found: true, Result: "ghost", Rev: 1, Call: 3, Return: 4},
	}
	r := &run{cfg: Config{Clients: 8, CheckTimeout: time.Minute, OutDir: t.TempDir()}}
	rep := &Report{}
	r.checkLinearizable(ops, rep)
	if !strings.HasPrefix(rep.Linearizable, "NOT linearizable") {
		t.Errorf("a read of a write nothing received: %q; want NOT linearizable", rep.Linearizable)
	}
}

// A value may outlive its TTL while no stream leader can expire it: read
// 12 s after a 2.25 s TTL ran out is fine when every server was down in
// between (ttlHealSlack after the heal), and a violation without a fault.
func TestTTLExpiryWaitsOutFaults(t *testing.T) {
	s := time.Second
	ops := []Op{
		{Client: 10, Kind: KindTTLPut, Key: "ns/t1", Value: "ttl-1", TTL: 2250 * time.Millisecond, Rev: 5, Call: 1 * time.Millisecond, Return: 17 * time.Millisecond},
		{Client: 10, Kind: KindTTLGet, Key: "ns/t1", Found: true, Result: "ttl-1", Rev: 5, Call: 11 * s, Return: 12 * s},
		{Client: 10, Kind: KindTTLGet, Key: "ns/t1", Call: 14 * s, Return: 14*s + time.Millisecond},
	}
	down := []FaultRecord{{Fault: Fault{Kind: "kill-all-nodes"}, Injected: 3 * s, Healed: 6 * s}}
	for _, c := range []struct {
		faults []FaultRecord
		ok     bool
	}{{down, true}, {nil, false}} {
		r := &run{cfg: Config{Clients: 8, CheckTimeout: time.Minute, OutDir: t.TempDir()}}
		rep := &Report{Faults: c.faults}
		r.checkLinearizable(ops, rep)
		if got := strings.HasPrefix(rep.Linearizable, "linearizable"); got != c.ok {
			t.Errorf("faults %v: %s", c.faults, rep.Linearizable)
		}
		// checkTTL sees the same bound (the put was definite here).
		if got := len(checkTTL(ops, c.faults)) == 0; got != c.ok {
			t.Errorf("faults %v: ttl check %v", c.faults, checkTTL(ops, c.faults))
		}
	}
}
