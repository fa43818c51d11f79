package check

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Report is the outcome of a run.
type Report struct {
	Clients, Keys, Locks int
	Duration             time.Duration // of the traffic
	Schedule             Schedule
	Faults               []FaultRecord
	// Totals by kind of operation, and overall.
	ByKind map[Kind]*Tally
	Total  Tally
	// Windows: before the first fault, then during and after each one.
	Windows []Window
	// Linearizable is porcupine's verdict, in words.
	Linearizable string
	// Visualisation is the path of porcupine's HTML page, written on a
	// linearizability violation.
	Visualisation string
	Violations    []Violation
	CheckTime     time.Duration
	// StaleBehind counts the stale gets that returned a value older than
	// one acknowledged before they began; StaleMaxLag is the longest time
	// by which one missed a change.
	StaleBehind   int
	StaleMaxLag   time.Duration
	StaleMaxLagAt Op // the stale get that lagged most
	// StaleMaxLagMissed is the oldest acknowledged change it missed.
	StaleMaxLagMissed Op
	// Edges counts what the edge workloads saw, one "what: outcome: n"
	// line each (how many writes landed at a TTL instant, how many
	// renewals were acknowledged at a lease's end, which refusals came).
	Edges []string
	// ByFaultKind holds the availability figures of each fault kind.
	ByFaultKind []*KindFigures
	// Watch summarises what the watch check saw; "" when it did not run
	// (Config.Watch unset), and then the report does not list it.
	Watch string
}

// Tally counts operations by outcome.
type Tally struct{ OK, Failed, Unknown int }

// N is the number of operations.
func (t Tally) N() int { return t.OK + t.Failed + t.Unknown }

func (t *Tally) add(o Outcome) {
	switch o {
	case OK:
		t.OK++
	case Failed:
		t.Failed++
	default:
		t.Unknown++
	}
}

// Window is a stretch of the run with its traffic figures.
type Window struct {
	Name     string
	From, To time.Duration
	Tally    Tally
	// KV and Lock split Tally: key-value operations, and lock
	// acquire/renew/release.
	KV, Lock   Tally
	Throughput float64 // operations per second invoked in the window
	// P50 and P99 are latencies of the operations answered in the window.
	P50, P99 time.Duration
}

// tally fills the counts and the windows. An operation belongs to the
// window in which it was invoked.
func (rep *Report) tally(ops []Op, end time.Duration) {
	rep.ByKind = map[Kind]*Tally{}
	var cuts []Window
	from, name := time.Duration(0), "before faults"
	for _, f := range rep.Faults {
		cuts = append(cuts, Window{Name: name, From: from, To: f.Injected})
		cuts = append(cuts, Window{Name: "during " + f.Fault.String(), From: f.Injected, To: f.Healed})
		from, name = f.Healed, "after "+f.Fault.String()
	}
	cuts = append(cuts, Window{Name: name, From: from, To: end})
	if len(rep.Faults) == 0 {
		cuts[0].Name = "whole run"
	}
	lat := make([][]time.Duration, len(cuts))
	for _, op := range ops {
		if op.Kind == KindFinalGet {
			continue
		}
		if rep.ByKind[op.Kind] == nil {
			rep.ByKind[op.Kind] = &Tally{}
		}
		rep.ByKind[op.Kind].add(op.Outcome)
		rep.Total.add(op.Outcome)
		for i := range cuts {
			if op.Call >= cuts[i].From && (op.Call < cuts[i].To || i == len(cuts)-1) {
				cuts[i].Tally.add(op.Outcome)
				if op.Outcome != Unknown {
					lat[i] = append(lat[i], op.Return-op.Call)
				}
				if op.Kind == KindAcquire || op.Kind == KindRenew || op.Kind == KindRelease {
					cuts[i].Lock.add(op.Outcome)
				} else {
					cuts[i].KV.add(op.Outcome)
				}
				break
			}
		}
	}
	for i := range cuts {
		if d := (cuts[i].To - cuts[i].From).Seconds(); d > 0 {
			cuts[i].Throughput = float64(cuts[i].Tally.N()) / d
		}
		if l := lat[i]; len(l) > 0 {
			slices.Sort(l)
			cuts[i].P50, cuts[i].P99 = l[len(l)/2], l[len(l)*99/100]
		}
	}
	rep.Windows = cuts
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func answered(t Tally) float64 { return pct(t.OK+t.Failed, t.N()) }

func pct(n, of int) float64 {
	if of == 0 {
		return 100
	}
	return 100 * float64(n) / float64(of)
}

// Print writes the summary people read.
func (rep *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\n== latchkey check: %d operations in %.1fs (%.0f/s), %d clients, %d keys, %d locks\n",
		rep.Total.N(), rep.Duration.Seconds(), float64(rep.Total.N())/max(rep.Duration.Seconds(), 1e-9), rep.Clients, rep.Keys, rep.Locks)
	fmt.Fprintf(w, "   ok %d (%.1f%%), refused %d (409: CAS mismatch, lock held, stale fence), unknown %d (timeout/503)\n\n",
		rep.Total.OK, pct(rep.Total.OK, rep.Total.N()), rep.Total.Failed, rep.Total.Unknown)
	fmt.Fprintf(w, "%-10s %8s %8s %8s %8s\n", "operation", "total", "ok", "refused", "unknown")
	kinds := make([]Kind, 0, len(rep.ByKind))
	for k := range rep.ByKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		t := rep.ByKind[k]
		fmt.Fprintf(w, "%-10s %8d %8d %8d %8d\n", k, t.N(), t.OK, t.Failed, t.Unknown)
	}
	// "answered" is the share of operations with a definite outcome (ok or
	// refused), overall, for key-value operations and for lock operations.
	// Latencies are of the answered operations.
	fmt.Fprintf(w, "\n%-30s %15s %7s %6s %8s %7s %7s %7s %7s %7s\n", "window", "time", "ops", "ops/s", "answered", "kv", "lock", "unknown", "p50 ms", "p99 ms")
	for _, win := range rep.Windows {
		fmt.Fprintf(w, "%-30s %6.1fs-%6.1fs %7d %6.0f %7.1f%% %6.1f%% %6.1f%% %7d %7.1f %7.1f\n", win.Name, win.From.Seconds(), win.To.Seconds(),
			win.Tally.N(), win.Throughput, answered(win.Tally), answered(win.KV), answered(win.Lock), win.Tally.Unknown,
			ms(win.P50), ms(win.P99))
	}
	if len(rep.Faults) > 0 {
		fmt.Fprintf(w, "\nfaults (seed %d):\n", rep.Schedule.Seed)
		for _, f := range rep.Faults {
			status := "ok"
			if f.Err != nil {
				status = "FAILED TO INJECT: " + f.Err.Error()
			}
			if f.Note != "" {
				status += "; " + f.Note
			}
			fmt.Fprintf(w, "  %6.1fs-%6.1fs %-24s %s\n", f.Injected.Seconds(), f.Healed.Seconds(), f.Fault, status)
		}
	}
	rep.printKinds(w)
	if len(rep.Edges) > 0 {
		fmt.Fprintf(w, "\nedge workloads:\n")
		for _, l := range rep.Edges {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintf(w, "\nchecks (%.1fs):\n", rep.CheckTime.Seconds())
	fmt.Fprintf(w, "  key-value history: %s\n", rep.Linearizable)
	if t := rep.ByKind[KindStaleGet]; t != nil {
		fmt.Fprintf(w, "  stale gets: %d of %d behind an acknowledged write, by at most %.1f ms",
			rep.StaleBehind, t.OK, ms(rep.StaleMaxLag))
		if rep.StaleBehind > 0 {
			g, m := rep.StaleMaxLagAt, rep.StaleMaxLagMissed
			fmt.Fprintf(w, "\n    (the get of %q at %s, in window %q, returned revision %d; the %s of revision %d was acknowledged at %s, in window %q)",
				g.Key, at(g), rep.windowOf(g.Call), g.Rev, m.Kind, m.Rev, at(m), rep.windowOf(m.Return))
		}
		fmt.Fprintln(w)
	}
	counts := map[string]int{}
	for _, v := range rep.Violations {
		counts[v.Check]++
	}
	checks := AllChecks
	if rep.Watch != "" {
		checks = append(slices.Clone(checks), CheckWatch)
	}
	for _, c := range checks {
		verdict := "ok"
		if n := counts[c]; n > 0 {
			verdict = fmt.Sprintf("%d VIOLATION(S)", n)
		}
		if c == CheckWatch {
			verdict += " (" + rep.Watch + ")"
		}
		fmt.Fprintf(w, "  %-16s %s\n", c, verdict)
	}
	if len(rep.Violations) == 0 {
		fmt.Fprintf(w, "\nno violations\n")
		return
	}
	fmt.Fprintf(w, "\n%d violation(s):\n", len(rep.Violations))
	for i, v := range rep.Violations {
		if i == 50 {
			fmt.Fprintf(w, "  ... and %d more\n", len(rep.Violations)-50)
			break
		}
		fmt.Fprintf(w, "  %s\n", strings.ReplaceAll(v.String(), "\n", " "))
	}
	if rep.Visualisation != "" {
		fmt.Fprintf(w, "porcupine visualisation: %s\n", rep.Visualisation)
	}
}

// windowOf names the window containing offset t.
func (rep *Report) windowOf(t time.Duration) string {
	for _, w := range rep.Windows {
		if t >= w.From && t < w.To {
			return w.Name
		}
	}
	return "the end of the run"
}

// Count returns the number of violations of one check.
func (rep *Report) Count(check string) int {
	n := 0
	for _, v := range rep.Violations {
		if v.Check == check {
			n++
		}
	}
	return n
}
