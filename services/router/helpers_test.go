package router_test

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

const testMaxValue = 4096

var quiet = slog.New(slog.DiscardHandler)

// env is one embedded NATS server with a router on its own connection.
type env struct {
	url    string
	set    subjects.Set
	client *nats.Conn // the test's client connection
	shards *nats.Conn // the test shards' connection
	router *router.Server
}

func newEnv(t testing.TB, shards int) *env {
	t.Helper()
	s := natstest.Server(t)
	e := &env{url: s.ClientURL(), set: subjects.New("")}
	e.client = natstest.Connect(t, e.url)
	e.shards = natstest.Connect(t, e.url)
	e.router = startRouter(t, e.url, shards)
	return e
}

func startRouter(t testing.TB, url string, shards int) *router.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := router.Start(ctx, natstest.Connect(t, url), router.Config{Shards: shards, MaxValueBytes: testMaxValue, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	return r
}

// testShard is a real NATS responder on one shard's subjects, standing in
// for a storage instance: get echoes its shard id as the value, put of the
// key "conflict" answers 409, scan answers from a fixed sorted list.
type testShard struct {
	id          string
	items       []*pb.Item
	fail        atomic.Bool  // answer every request with a 503
	pageCap     atomic.Int32 // if > 0, cut scan pages to this many items, as a byte budget would
	traceparent atomic.Value
}

func (e *env) serveShard(t testing.TB, id string, items []*pb.Item) *testShard {
	t.Helper()
	sh := &testShard{id: id, items: items}
	sh.traceparent.Store("")
	for _, op := range []string{"get", "put", "delete", "scan"} {
		sub, err := e.shards.Subscribe(e.set.Shard(id, op), func(m *nats.Msg) { sh.handle(op, m) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := e.shards.Flush(); err != nil {
		t.Fatal(err)
	}
	return sh
}

func (sh *testShard) handle(op string, m *nats.Msg) {
	if v, ok := m.Header["traceparent"]; ok {
		sh.traceparent.Store(v[0])
	}
	if sh.fail.Load() {
		replyError(m, 503, "storage_down", "shard "+sh.id+" storage is down")
		return
	}
	var out proto.Message
	switch op {
	case "get":
		in := &pb.GetRequest{}
		_ = proto.Unmarshal(m.Data, in)
		out = &pb.GetResponse{Found: true, Key: in.Key, Value: []byte(sh.id), Revision: 7}
	case "put":
		in := &pb.PutRequest{}
		_ = proto.Unmarshal(m.Data, in)
		if in.Key == "conflict" {
			replyError(m, 409, "revision_mismatch", "key conflict is at revision 9, not 3")
			return
		}
		out = &pb.PutResponse{Revision: 8}
	case "delete":
		out = &pb.DeleteResponse{Deleted: true, Revision: 9}
	case "scan":
		in := &pb.ScanRequest{}
		_ = proto.Unmarshal(m.Data, in)
		resp := &pb.ScanResponse{}
		for _, it := range sh.items {
			if !strings.HasPrefix(it.Key, in.Prefix) || it.Key <= in.After {
				continue
			}
			if c := int(sh.pageCap.Load()); len(resp.Items) == int(in.Limit) || (c > 0 && len(resp.Items) == c) {
				resp.More = true
				break
			}
			resp.Items = append(resp.Items, it)
		}
		out = resp
	}
	data, _ := proto.Marshal(out)
	_ = m.Respond(data)
}

func replyError(m *nats.Msg, code int, reason, msg string) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(apierr.HeaderCode, strconv.Itoa(code))
	r.Header.Set(apierr.HeaderMessage, msg)
	r.Data, _ = proto.Marshal(&pb.Error{Code: int32(code), Reason: reason, Message: msg})
	_ = m.RespondMsg(r)
}

// request sends body to a public endpoint and returns the raw reply.
func (e *env) request(t testing.TB, endpoint string, hdr nats.Header, body []byte) *nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reply, err := e.client.RequestMsgWithContext(ctx, &nats.Msg{Subject: e.set.Public(endpoint), Header: hdr, Data: body})
	if err != nil {
		t.Fatalf("%s: %v", endpoint, err)
	}
	return reply
}

// call sends in as protobuf and decodes the reply into out, or returns the
// error the reply carries.
func (e *env) call(t testing.TB, endpoint string, in, out proto.Message) *apierr.Error {
	t.Helper()
	data, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	reply := e.request(t, endpoint, nil, data)
	if code := reply.Header.Get(apierr.HeaderCode); code != "" {
		body := &pb.Error{}
		_ = proto.Unmarshal(reply.Data, body)
		return apierr.FromHeaders(code, reply.Header.Get(apierr.HeaderMessage), body.Reason)
	}
	if err := proto.Unmarshal(reply.Data, out); err != nil {
		t.Fatal(err)
	}
	return nil
}

func ids(n int) []string {
	var out []string
	for i := range n {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func sortedKeys(items []*pb.Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Key)
	}
	slices.Sort(out)
	return out
}
