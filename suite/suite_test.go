package suite_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/suite"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// StartServer brings up a server and the three services, each answering
// the micro ping as a deployment's would; Stop takes it all down.
func TestStartServerServesAndStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := suite.StartServer(ctx, suite.ServerConfig{Dir: t.TempDir(), Options: suite.Options{Shards: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Services.Storage == nil || d.Services.Router == nil || d.Services.Locker == nil {
		t.Fatalf("services %+v: want all three", d.Services)
	}
	nc, err := nats.Connect(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("$SRV.PING", inbox, nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"latchkey-storage": true, "latchkey-router": true, "latchkey-locker": true}
	for len(want) > 0 {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatalf("micro ping: %v; no answer from %v", err, want)
		}
		var ping struct{ Name string }
		_ = json.Unmarshal(m.Data, &ping)
		delete(want, ping.Name)
	}
	d.Stop(ctx)
	if d.Server.Running() {
		t.Fatal("server still running after Stop")
	}
}

// An unknown kind is refused, not started as something else.
func TestStartInstanceUnknownKind(t *testing.T) {
	if _, err := suite.StartInstance(context.Background(), "cache", nil, nil, suite.Options{}); err == nil {
		t.Fatal("unknown kind started")
	}
}

// ServeNewShards lets a move add a shard id nothing served: it starts
// storage for it, the move finishes, and a key the new shard owns is
// written and read through it.
func TestServeNewShardsLetsAMoveFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := suite.StartServer(ctx, suite.ServerConfig{Dir: t.TempDir(), Options: suite.Options{Shards: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(context.Background())
	stop := d.ServeNewShards(ctx)
	defer stop()
	call := func(endpoint string, req, resp proto.Message) error {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		return service.Call(cctx, d.Conn, "latchkey.admin.shards."+endpoint, nil, req, resp)
	}
	cur := &pb.ShardsGetResponse{}
	if err := call("get", &pb.ShardsGetRequest{}, cur); err != nil {
		t.Fatal(err)
	}
	if err := call("set", &pb.ShardsSetRequest{Shards: []string{"0", "1", "2"}, ExpectedEpoch: cur.Epoch}, &pb.ShardsSetResponse{}); err != nil {
		t.Fatal(err)
	}
	for {
		if err := call("get", &pb.ShardsGetRequest{}, cur); err != nil {
			t.Fatal(err)
		}
		if len(cur.Shards) == 3 && cur.Move.GetState() == pb.MoveState_MOVE_STATE_DONE {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the move to 3 shards did not finish: %v", cur)
		case <-time.After(100 * time.Millisecond):
		}
	}
	c := client.New(d.Conn)
	for i := range 20 { // some of these keys are shard 2's
		k := fmt.Sprintf("k%d", i)
		if _, err := c.Put(ctx, k, []byte(k)); err != nil {
			t.Fatalf("put %s after the move: %v", k, err)
		}
		if v, err := c.Get(ctx, k); err != nil || string(v.Value) != k {
			t.Fatalf("get %s after the move: %v %v", k, v, err)
		}
	}
}
