package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
)

// TestWatchCLIAndShellTourAgainstDev runs the README's watch tour against
// `latchkey dev`: `latchkey watch PREFIX --initial --json` prints one JSON
// line per event, and a plain NATS client (what `nats sub` + `nats req`
// do) gets protojson events on its inbox. dev runs its NATS server with
// users (natstest.WatchUsers, whose event user TestWatchEventConnection-
// Permissions checks), and clients without credentials still work.
func TestWatchCLIAndShellTourAgainstDev(t *testing.T) {
	dev := startDev(t, t.TempDir())
	if r := cli(t, "", "--server", dev.url, "put", "user:0", "before"); r.code != 0 {
		t.Fatalf("put: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, latchkeyBin(t), "--server", dev.url, "watch", "user:", "--initial", "--json")
	cmd.Env = cliEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	read := func() map[string]any {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("latchkey watch exited")
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("not a JSON line: %q", l)
			}
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no line from latchkey watch within 10s")
		}
		return nil
	}
	if m := read(); m["type"] != "put" || m["key"] != "user:0" {
		t.Fatalf("first line %v, want the initial put of user:0", m)
	}
	if m := read(); m["type"] != "initial_done" {
		t.Fatalf("second line %v, want initial_done", m)
	}

	// The shell tour: subscribe to an inbox, ask for a watch delivering there.
	nc := natstest.Connect(t, dev.url)
	inbox := "_INBOX.tour"
	ch := make(chan *nats.Msg, 16)
	sub, _ := nc.ChanSubscribe(inbox, ch)
	defer sub.Unsubscribe()
	reply, err := nc.Request("latchkey.kv.watch", []byte(`{"prefix":"user:","deliver":"`+inbox+`"}`), 5*time.Second)
	if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("watch: %v %s", err, reply.Data)
	}
	if r := cli(t, "", "--server", dev.url, "put", "user:7", "hi"); r.code != 0 {
		t.Fatalf("put: %+v", r)
	}
	if m := read(); m["type"] != "put" || m["key"] != "user:7" {
		t.Fatalf("CLI line %v, want put user:7", m)
	}
	for {
		select {
		case m := <-ch:
			var ev pb.WatchEvent
			if err := protojson.Unmarshal(m.Data, &ev); err != nil {
				t.Fatalf("event %q: %v", m.Data, err)
			}
			if ev.Type == pb.WatchEventType_WATCH_EVENT_TYPE_HEARTBEAT {
				continue
			}
			if ev.Type != pb.WatchEventType_WATCH_EVENT_TYPE_PUT || ev.Key != "user:7" || !strings.Contains(string(m.Data), `"WATCH_EVENT_TYPE_PUT"`) {
				t.Fatalf("inbox event %s", m.Data)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatal("no event on the inbox")
		}
	}
}
