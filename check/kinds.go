package check

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// KindFigures are the availability figures of one fault kind over every
// fault of that kind in a run. Each fault's window runs from its
// injection to the next fault's (or the end of traffic), so recovery
// after the heal counts with the fault that caused it.
type KindFigures struct {
	Kind    string
	Faults  int
	Held    time.Duration // total time the faults were in effect
	Tally   Tally         // operations invoked in the windows
	Recover []time.Duration
	// FirstOK is, per fault, how long after the heal the first
	// operation invoked after it succeeded.
	FirstOK []time.Duration
	// Unrecovered counts faults after whose heal the window ended before
	// the deployment answered everything again.
	Unrecovered int
	Violations  int
}

// recoverSpan is how long everything invoked must be answered for the
// deployment to count as recovered: one second of no unknown outcome.
const recoverSpan = time.Second

// byFaultKind computes the per-kind table. "Recovered" is the first
// instant after the heal from which every operation invoked during the
// next second was answered (ok or a definite refusal) and at least one
// succeeded: with many clients on several nodes some operation always
// succeeds quickly, so "first success" alone says little; both are
// reported. Violations are attributed to the window of the first time
// their description names (the operation that broke the rule); those
// naming none are counted under "unattributed".
func byFaultKind(ops []Op, faults []FaultRecord, end time.Duration, vs []Violation) []*KindFigures {
	if len(faults) == 0 {
		return nil
	}
	ops = slices.Clone(ops)
	slices.SortFunc(ops, func(a, b Op) int { return int(a.Call - b.Call) })
	var order []string
	kinds := map[string]*KindFigures{}
	windowEnd := func(i int) time.Duration {
		if i+1 < len(faults) {
			return faults[i+1].Injected
		}
		return end
	}
	for i, f := range faults {
		k := kinds[f.Fault.Kind]
		if k == nil {
			k = &KindFigures{Kind: f.Fault.Kind}
			kinds[f.Fault.Kind] = k
			order = append(order, f.Fault.Kind)
		}
		k.Faults++
		k.Held += f.Healed - f.Injected
		to := windowEnd(i)
		var after []Op
		for _, op := range ops {
			if op.Kind == KindFinalGet || op.Call < f.Injected || op.Call >= to {
				continue
			}
			k.Tally.add(op.Outcome)
			if op.Call >= f.Healed {
				after = append(after, op)
			}
		}
		first := time.Duration(-1)
		for _, op := range after {
			if op.Outcome == OK {
				first = op.Return - f.Healed
				break
			}
		}
		if first >= 0 {
			k.FirstOK = append(k.FirstOK, first)
		}
		if rec, ok := recovered(after, to); ok {
			k.Recover = append(k.Recover, rec-f.Healed)
		} else {
			k.Unrecovered++
		}
	}
	unattributed := &KindFigures{Kind: "unattributed"}
	for _, v := range vs {
		t, ok := firstTime(v.Detail)
		placed := false
		for i, f := range faults {
			if ok && t >= f.Injected && t < windowEnd(i) {
				kinds[f.Fault.Kind].Violations++
				placed = true
				break
			}
		}
		if !placed {
			unattributed.Violations++
		}
	}
	var out []*KindFigures
	for _, k := range order {
		out = append(out, kinds[k])
	}
	if unattributed.Violations > 0 {
		out = append(out, unattributed)
	}
	return out
}

// recovered returns the call time of the first operation from which every
// operation invoked within recoverSpan was answered, with one success
// among them (near the window's end, what is left of the second); false
// when that never happens in the window.
func recovered(after []Op, _ time.Duration) (time.Duration, bool) {
	for i := range after {
		start := after[i].Call
		good, any := true, false
		for _, op := range after[i:] {
			if op.Call >= start+recoverSpan {
				break
			}
			if op.Outcome == Unknown {
				good = false
				break
			}
			any = any || op.Outcome == OK
		}
		if good && any {
			return start, true
		}
	}
	return 0, false
}

var timeInDetail = regexp.MustCompile(`(\d+\.\d{3})s`)

func firstTime(s string) (time.Duration, bool) {
	m := timeInDetail.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}

func durs(ds []time.Duration) (median, worst time.Duration) {
	if len(ds) == 0 {
		return -1, -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}

func secs(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// printKinds writes the per-fault-kind table.
func (rep *Report) printKinds(w io.Writer) {
	if len(rep.ByFaultKind) == 0 {
		return
	}
	fmt.Fprintf(w, "\nby fault kind (window: injection to the next fault; recovered: from the heal until 1 s with every operation answered):\n")
	fmt.Fprintf(w, "%-20s %6s %8s %7s %9s %8s %11s %11s %9s %10s\n", "fault kind", "faults", "held", "ops", "answered", "unknown", "recover p50", "recover max", "first ok", "violations")
	for _, k := range rep.ByFaultKind {
		if k.Kind == "unattributed" {
			fmt.Fprintf(w, "%-20s %6s %8s %7s %9s %8s %11s %11s %9s %10d\n", k.Kind, "", "", "", "", "", "", "", "", k.Violations)
			continue
		}
		p50, worst := durs(k.Recover)
		_, firstWorst := durs(k.FirstOK)
		rmax := secs(worst)
		if k.Unrecovered > 0 {
			rmax = fmt.Sprintf(">window x%d", k.Unrecovered)
		}
		fmt.Fprintf(w, "%-20s %6d %7.1fs %7d %8.1f%% %7.1f%% %11s %11s %9s %10d\n", k.Kind, k.Faults, k.Held.Seconds(), k.Tally.N(),
			answered(k.Tally), pct(k.Tally.Unknown, k.Tally.N()), secs(p50), rmax, secs(firstWorst), k.Violations)
	}
}
