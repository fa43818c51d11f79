package suite_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/latchkey/latchkey/suite"
	"github.com/nats-io/nats.go"
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
