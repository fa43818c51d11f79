package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// reshardOnline grows the deployment from 3 to 4 shards the way
// docs/DEPLOY.md tells an operator to: both storage instances are
// re-created, one at a time, serving shard 3 as well, then the admin user
// asks the routers to move. A writer goes on throughout; every
// acknowledged write reads back afterwards, a stale expected_epoch is
// refused, and the routers' moving writes must raise no permission
// violation (the service-violation check runs after this).
func reshardOnline(ctx context.Context, t *testing.T, s *stack, c *client.Client, written map[string]string) {
	admin := s.connect(t, "admin")
	call := func(endpoint string, req, resp proto.Message) error {
		// set estimates the keys to move from the shard streams first: on
		// this loaded 2-core box that can take seconds.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return service.Call(cctx, admin.nc, "latchkey.admin.shards."+endpoint, nil, req, resp)
	}
	get := func() (*pb.ShardsGetResponse, error) {
		resp := &pb.ShardsGetResponse{}
		return resp, call("get", &pb.ShardsGetRequest{}, resp)
	}
	before, err := get()
	if err != nil {
		t.Fatalf("shards.get as admin: %v", err)
	}
	if len(before.Shards) != 3 {
		t.Fatalf("shards before the move: %v, want 3", before.Shards)
	}

	w := startWriter(ctx, t, c, "load-reshard")
	w.waitAcks(t, 20)
	// Later compose commands (the TLS step re-creates containers) keep
	// the new set.
	s.env = append(s.env, "LATCHKEY_STORAGE_SHARDS=0,1,2,3")
	for _, svc := range []string{"storage-a", "storage-b"} {
		s.run(ctx, t, "up", "-d", "--no-deps", "--no-build", "--wait", "--wait-timeout", "120", svc)
		w.waitAcks(t, 10)
	}
	want := []string{"0", "1", "2", "3"}
	set := &pb.ShardsSetResponse{}
	if err := call("set", &pb.ShardsSetRequest{Shards: want, ExpectedEpoch: before.Epoch}, set); err != nil {
		t.Fatalf("shards.set 0,1,2,3 as admin: %v", err)
	}
	start := time.Now()
	waitFor(ctx, t, "the move to 4 shards", 120*time.Second, func(context.Context) error {
		cur, err := get()
		if err != nil {
			return err
		}
		if cur.Epoch > before.Epoch && slices.Equal(cur.Shards, want) {
			return nil
		}
		return fmt.Errorf("epoch %d, shards %v, move %v", cur.Epoch, cur.Shards, cur.Move)
	})
	after, _ := get()
	t.Logf("moved to %v in %s: %d keys moved, state %v", after.Shards, time.Since(start).Round(time.Millisecond),
		after.GetMove().GetKeysMoved(), after.GetMove().GetState())
	err = call("set", &pb.ShardsSetRequest{Shards: []string{"0", "1", "2"}, ExpectedEpoch: before.Epoch}, &pb.ShardsSetResponse{})
	if !errors.Is(err, apierr.ReasonEpochMismatch) {
		t.Errorf("shards.set with the stale epoch %d: %v, want epoch_mismatch", before.Epoch, err)
	}
	w.waitAcks(t, 20)
	w.finish(t, written)
	verify(ctx, t, c, written)
}
