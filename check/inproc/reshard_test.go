package inproc_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/inproc"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// TestCheckWhileResharding is the CI run of `latchkey check --in-process
// --reshard`: the shard set goes 3 -> 4 -> 3 -> 4 while eight clients run
// the checker's workload, with a stream leader's node and a storage
// instance taken down between the moves. Every check must pass: no
// acknowledged write lost, gets linearizable, fences and TTLs kept.
func TestCheckWhileResharding(t *testing.T) {
	if testing.Short() {
		t.Skip("fault run")
	}
	ctx := context.Background()
	d, err := inproc.Start(ctx, inproc.Options{Dir: t.TempDir(), SpareShards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	admin, err := d.Connect(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	call := func(ctx context.Context, endpoint string, req, resp proto.Message) error {
		return service.Call(ctx, admin.Conn(), "latchkey.admin.shards."+endpoint, nil, req, resp)
	}
	r, err := check.NewResharder(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	if sets := r.Sets(); !slices.Equal(sets[0], []string{"0", "1", "2"}) || !slices.Equal(sets[1], []string{"0", "1", "2", "3"}) {
		t.Fatalf("resharder sets %v", sets)
	}
	reshard := check.Fault{Kind: check.KindReshard}
	sched := check.Schedule{Seed: 12, Events: []check.Event{
		{At: 3 * time.Second, Hold: 3 * time.Second, Fault: reshard},
		{At: 10 * time.Second, Hold: 2500 * time.Millisecond, Fault: check.Fault{Kind: inproc.KillStreamLeader, Target: 1}},
		{At: 16 * time.Second, Hold: 3 * time.Second, Fault: reshard},
		{At: 23 * time.Second, Hold: 2 * time.Second, Fault: check.Fault{Kind: inproc.RestartStorage, Target: 0}},
		{At: 28 * time.Second, Hold: 3 * time.Second, Fault: reshard},
	}}
	rep, err := check.Run(ctx, check.Config{
		Duration: 40 * time.Second,
		Seed:     12,
		Connect:  d.Connect,
		Injector: check.Combine(d, r),
		Schedule: &sched,
		Progress: testWriter{t},
		OutDir:   t.TempDir(),
	})
	if rep != nil {
		rep.Print(testWriter{t})
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Linearizable, "linearizable") {
		t.Errorf("porcupine: %s", rep.Linearizable)
	}
	moves := 0
	for _, f := range rep.Faults {
		if f.Err != nil {
			t.Errorf("fault %s: %v", f.Fault, f.Err)
		}
		if f.Fault.Kind == check.KindReshard {
			moves++
		}
	}
	if moves != 3 {
		t.Errorf("%d moves ran, want 3", moves)
	}
	cur := &pb.ShardsGetResponse{}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := call(cctx, "get", &pb.ShardsGetRequest{}, cur); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cur.Shards, []string{"0", "1", "2", "3"}) {
		t.Errorf("after three moves the set is %v, want 0-3", cur.Shards)
	}
}
