package check

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Fault is one fault an Injector can cause and heal.
type Fault struct {
	// Kind, e.g. "kill-node", "kill-stream-leader", "restart-storage",
	// "restart-router", "restart-locker", "pause-holder".
	Kind string
	// Target picks the instance, node or shard the fault applies to.
	Target int
	// MinHold and MaxHold bound how long the schedule holds the fault;
	// zero means the default 1.5-3s. A pause must outlast an election
	// (2-15s) to show what a frozen process does.
	MinHold, MaxHold time.Duration
}

func (f Fault) String() string { return fmt.Sprintf("%s %d", f.Kind, f.Target) }

// KindPauseHolder is the fault the engine injects itself, on any
// deployment: a lock holder stops renewing past its lease, a newer holder
// takes the lock and writes, and then the paused one tries its fenced
// writes with the old token.
const KindPauseHolder = "pause-holder"

// Injector causes faults in a deployment. The in-process cluster is one;
// a compose deployment can drive container kills, pauses and network
// disconnects through the same interface.
type Injector interface {
	// Faults lists the faults this injector can cause.
	Faults() []Fault
	// Inject causes f. It returns once the fault is in effect.
	Inject(ctx context.Context, f Fault) error
	// Heal undoes f. It returns once the deployment is whole again
	// (processes started; they may still be catching up).
	Heal(ctx context.Context, f Fault) error
}

// Event is one scheduled fault: injected At after the start, healed
// Hold later.
type Event struct {
	At    time.Duration
	Hold  time.Duration
	Fault Fault
}

// Schedule is the reproducible fault plan of a run.
type Schedule struct {
	Seed   uint64
	Events []Event
}

// NewSchedule plans faults from a seed: after a warm-up, one fault at a
// time, each held for 1.5-3s and followed by 1.5-3s of recovery. Kinds come
// in a seeded random order, every kind once before any repeats, with a
// random target among that kind's faults. The run's last fifth stays
// fault-free so recovery shows in the figures.
func NewSchedule(seed uint64, duration time.Duration, faults []Fault) Schedule {
	s := Schedule{Seed: seed}
	if len(faults) == 0 {
		return s
	}
	byKind := map[string][]Fault{}
	var kinds []string
	for _, f := range faults {
		if _, ok := byKind[f.Kind]; !ok {
			kinds = append(kinds, f.Kind)
		}
		byKind[f.Kind] = append(byKind[f.Kind], f)
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	between := func() time.Duration { return 1500*time.Millisecond + time.Duration(rng.IntN(1500))*time.Millisecond }
	at := min(3*time.Second, duration/6)
	end := duration - duration/5
	var bag []string
	for {
		if len(bag) == 0 {
			bag = append(bag, kinds...)
			rng.Shuffle(len(bag), func(i, j int) { bag[i], bag[j] = bag[j], bag[i] })
		}
		hold := between()
		if at+hold > end {
			return s
		}
		choice := byKind[bag[0]]
		f := choice[rng.IntN(len(choice))]
		if f.MaxHold > f.MinHold {
			// Drawn only for faults that set a range, so the schedules
			// of seeds without such faults stay as they were.
			hold = f.MinHold + time.Duration(rng.Int64N(int64(f.MaxHold-f.MinHold)))
			hold = hold.Truncate(100 * time.Millisecond)
			if at+hold > end {
				return s
			}
		}
		s.Events = append(s.Events, Event{At: at, Hold: hold, Fault: f})
		bag = bag[1:]
		at += hold + between()
	}
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fault schedule (seed %d): %d faults\n", s.Seed, len(s.Events))
	for _, e := range s.Events {
		fmt.Fprintf(&b, "  at %6.1fs for %.1fs: %s\n", e.At.Seconds(), e.Hold.Seconds(), e.Fault)
	}
	return b.String()
}
