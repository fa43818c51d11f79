package check_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
)

// A schedule is reproducible from its seed, brings every kind of fault
// before repeating one, never overlaps faults, and leaves the run's last
// fifth fault-free.
func TestScheduleFromSeed(t *testing.T) {
	faults := []check.Fault{{Kind: "a"}, {Kind: "a", Target: 1}, {Kind: "b"}, {Kind: "c"}}
	cases := []struct {
		seed     uint64
		duration time.Duration
	}{{1, time.Minute}, {2, 30 * time.Second}, {99, 5 * time.Minute}}
	for _, c := range cases {
		s := check.NewSchedule(c.seed, c.duration, faults)
		if again := check.NewSchedule(c.seed, c.duration, faults); !reflect.DeepEqual(s, again) {
			t.Fatalf("seed %d: two schedules differ", c.seed)
		}
		if len(s.Events) < 3 {
			t.Fatalf("seed %d, %s: only %d faults", c.seed, c.duration, len(s.Events))
		}
		kinds := map[string]bool{}
		for _, e := range s.Events[:3] {
			kinds[e.Fault.Kind] = true
		}
		if len(kinds) != 3 {
			t.Errorf("seed %d: the first three faults repeat a kind: %v", c.seed, s.Events[:3])
		}
		var end time.Duration
		for _, e := range s.Events {
			if e.At < end {
				t.Errorf("seed %d: fault at %s overlaps the previous one (until %s)", c.seed, e.At, end)
			}
			end = e.At + e.Hold
		}
		if end > c.duration-c.duration/5 {
			t.Errorf("seed %d: faults run until %s, into the last fifth of %s", c.seed, end, c.duration)
		}
	}
	if s := check.NewSchedule(1, time.Minute, nil); len(s.Events) != 0 {
		t.Errorf("no faults to inject, yet a schedule of %d", len(s.Events))
	}
}
