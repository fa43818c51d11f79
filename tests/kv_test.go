package tests

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// kvEnv is one embedded NATS server with storage and router on it.
type kvEnv struct {
	nc *nats.Conn
	c  *client.Client
}

func newKVEnv(t *testing.T) kvEnv {
	t.Helper()
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 3})
	return kvEnv{nc: nc, c: client.New(nc)}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls check until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestKVRoundTripAwkwardKeys(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	keys := []struct{ name, key string }{
		{"plain", "user:42"},
		{"spaces", "a key with  spaces "},
		{"dots", "a.b..c."},
		{"lone dot", "."},
		{"star", "*"},
		{"gt", ">"},
		{"wildcards in tokens", "a.*.>"},
		{"dollar", "$SYS.REQ.SERVER.PING"},
		{"slashes", "/a/b/c/"},
		{"tab and newline", "a\tb\nc"},
		{"unicode", "ключ-🔑-鍵"},
		{"1024 bytes", strings.Repeat("k", 1024)},
		{"1024 bytes multibyte", strings.Repeat("é", 512)},
	}
	for _, tt := range keys {
		t.Run(tt.name, func(t *testing.T) {
			value := []byte("value of " + tt.key)
			rev, err := env.c.Put(ctx, tt.key, value)
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			e, err := env.c.Get(ctx, tt.key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if e.Key != tt.key || !bytes.Equal(e.Value, value) || e.Revision != rev {
				t.Fatalf("Get = %q %q rev %d; want %q %q rev %d", e.Key, e.Value, e.Revision, tt.key, value, rev)
			}
			page, err := env.c.Scan(ctx, tt.key)
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			if len(page.Items) == 0 || page.Items[0].Key != tt.key {
				t.Fatalf("Scan(%q) = %v; want the key first", tt.key, page.Items)
			}
			deleted, _, err := env.c.Delete(ctx, tt.key)
			if err != nil || !deleted {
				t.Fatalf("Delete = %v, %v; want true, nil", deleted, err)
			}
			if _, err := env.c.Get(ctx, tt.key); !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("Get after delete = %v; want ErrNotFound", err)
			}
			deleted, _, err = env.c.Delete(ctx, tt.key)
			if err != nil || deleted {
				t.Fatalf("second Delete = %v, %v; want false, nil", deleted, err)
			}
		})
	}
}

func TestKVEmptyValue(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	if _, err := env.c.Put(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	e, err := env.c.Get(ctx, "empty")
	if err != nil || len(e.Value) != 0 {
		t.Fatalf("Get empty value = %v, %v; want found and empty", e, err)
	}
}

func TestKVCompareAndSet(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	c := env.c

	r1, err := c.Put(ctx, "cas", []byte("1"), client.IfAbsent())
	if err != nil {
		t.Fatalf("IfAbsent on a new key: %v", err)
	}
	if _, err := c.Put(ctx, "cas", []byte("x"), client.IfAbsent()); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("IfAbsent on an existing key = %v; want ErrConflict", err)
	}
	r2, err := c.Put(ctx, "cas", []byte("2"), client.IfRevision(r1))
	if err != nil {
		t.Fatalf("IfRevision(current): %v", err)
	}
	if r2 <= r1 {
		t.Fatalf("revision went from %d to %d; want it to grow", r1, r2)
	}
	_, err = c.Put(ctx, "cas", []byte("x"), client.IfRevision(r1))
	if !errors.Is(err, client.ErrConflict) {
		t.Fatalf("IfRevision(stale) = %v; want ErrConflict", err)
	}
	if e, _ := c.Get(ctx, "cas"); e == nil || string(e.Value) != "2" || e.Revision != r2 {
		t.Fatalf("a refused CAS changed the key: %+v", e)
	}
	if _, err := c.Put(ctx, "cas-missing", []byte("x"), client.IfRevision(r2)); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("IfRevision on an absent key = %v; want ErrConflict", err)
	}
	if _, _, err := c.Delete(ctx, "cas", client.IfRevision(r1)); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("Delete IfRevision(stale) = %v; want ErrConflict", err)
	}
	if deleted, _, err := c.Delete(ctx, "cas", client.IfRevision(r2)); err != nil || !deleted {
		t.Fatalf("Delete IfRevision(current) = %v, %v; want true, nil", deleted, err)
	}
	// Absent again: IfAbsent works on a deleted key.
	if _, err := c.Put(ctx, "cas", []byte("3"), client.IfAbsent()); err != nil {
		t.Fatalf("IfAbsent after delete: %v", err)
	}
}

func TestKVTTLExpires(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	if _, err := env.c.Put(ctx, "ttl", []byte("v"), client.WithTTL(999*time.Millisecond)); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("TTL 999ms = %v; want ErrInvalid", err)
	}
	if _, err := env.c.Put(ctx, "ttl", []byte("v"), client.WithTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.c.Put(ctx, "no-ttl", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() error {
		if _, err := env.c.Get(ctx, "ttl"); !errors.Is(err, client.ErrNotFound) {
			return fmt.Errorf("key with a 1s TTL: Get = %v", err)
		}
		return nil
	})
	if _, err := env.c.Get(ctx, "no-ttl"); err != nil {
		t.Fatalf("a key without TTL went away: %v", err)
	}
}

func TestKVStaleGetSeesWriteEventually(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	for i := range 3 {
		want := "v" + strconv.Itoa(i)
		if _, err := env.c.Put(ctx, "stale", []byte(want)); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, func() error {
			e, err := env.c.Get(ctx, "stale", client.Stale())
			if err != nil {
				return err
			}
			if string(e.Value) != want {
				return fmt.Errorf("stale get = %q, want %q", e.Value, want)
			}
			return nil
		})
	}
}

func TestKVScanPagesAcrossShards(t *testing.T) {
	env := newKVEnv(t)
	ctx := testCtx(t)
	var want []string
	for i := range 120 {
		k := fmt.Sprintf("scan/%03d", i)
		want = append(want, k)
		if _, err := env.c.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	// Neighbours that share bytes with the prefix but not the prefix.
	for _, k := range []string{"scan", "scan.", "scan0", "sca", "scao/1"} {
		if _, err := env.c.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}

	for _, size := range []int{1, 7, 100, 1000} {
		t.Run(fmt.Sprintf("pages of %d", size), func(t *testing.T) {
			var got []string
			after := ""
			for pages := 0; ; pages++ {
				if pages > len(want)+1 {
					t.Fatalf("more pages than keys: paging does not advance")
				}
				p, err := env.c.Scan(ctx, "scan/", client.Limit(size), client.After(after))
				if err != nil {
					t.Fatal(err)
				}
				if len(p.Items) > size {
					t.Fatalf("page of %d items; limit %d", len(p.Items), size)
				}
				for _, e := range p.Items {
					if string(e.Value) != e.Key || e.Revision == 0 {
						t.Fatalf("item %+v: value or revision wrong", e)
					}
					got = append(got, e.Key)
				}
				if !p.More {
					break
				}
				after = p.Items[len(p.Items)-1].Key
			}
			if !slices.Equal(got, want) {
				t.Fatalf("scan returned %d keys %v...; want %d keys in order, each once", len(got), head(got), len(want))
			}
		})
	}

	t.Run("ScanAll", func(t *testing.T) {
		var got []string
		for e, err := range env.c.ScanAll(ctx, "scan/", client.Limit(13)) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, e.Key)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ScanAll returned %d keys; want %d in order", len(got), len(want))
		}
	})

	t.Run("after mid-way", func(t *testing.T) {
		p, err := env.c.Scan(ctx, "scan/", client.After("scan/049"), client.Limit(2))
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Items) != 2 || p.Items[0].Key != "scan/050" || p.Items[1].Key != "scan/051" || !p.More {
			t.Fatalf("page after scan/049 = %+v", p)
		}
	})

	t.Run("empty prefix sees everything", func(t *testing.T) {
		n := 0
		for _, err := range env.c.ScanAll(ctx, "") {
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != len(want)+5 {
			t.Fatalf("scan of everything: %d keys; want %d", n, len(want)+5)
		}
	})
}

func head(s []string) []string { return s[:min(len(s), 5)] }

// rawRequest sends body to a public subject as `nats req` would, with the
// timeout header a latchkey client would send.
func rawRequest(t *testing.T, nc *nats.Conn, subject string, body []byte) *nats.Msg {
	t.Helper()
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	msg.Header.Set(service.HeaderTimeout, "3000")
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatalf("request on %s got no reply: %v", subject, err)
	}
	return reply
}

func TestKVBadInputIsRefusedWithAReason(t *testing.T) {
	env := newKVEnv(t)
	b64 := base64.StdEncoding.EncodeToString
	big := func(n int) string { return strings.Repeat("k", n) }
	tests := []struct {
		rule    string
		subject string
		body    string
		code    int
	}{
		{"get: empty key", "latchkey.kv.get", `{"key":""}`, 400},
		{"get: no key at all", "latchkey.kv.get", `{}`, 400},
		{"put: empty key", "latchkey.kv.put", `{"key":"","value":"aGk="}`, 400},
		{"delete: empty key", "latchkey.kv.delete", `{"key":""}`, 400},
		{"get: key of 1025 bytes", "latchkey.kv.get", `{"key":"` + big(1025) + `"}`, 413},
		{"put: key of 1025 bytes", "latchkey.kv.put", `{"key":"` + big(1025) + `","value":"aGk="}`, 413},
		{"delete: key of 1025 bytes", "latchkey.kv.delete", `{"key":"` + big(1025) + `"}`, 413},
		{"put: value over 512 KiB", "latchkey.kv.put", `{"key":"k","value":"` + b64(make([]byte, 512*1024+1)) + `"}`, 413},
		{"put: ttl_ms 999", "latchkey.kv.put", `{"key":"k","value":"aGk=","ttl_ms":"999"}`, 400},
		{"put: ttlMs negative", "latchkey.kv.put", `{"key":"k","value":"aGk=","ttlMs":-5}`, 400},
		{"scan: limit 1001", "latchkey.kv.scan", `{"prefix":"a","limit":1001}`, 400},
		{"scan: prefix of 1025 bytes", "latchkey.kv.scan", `{"prefix":"` + big(1025) + `"}`, 413},
		{"put: fence with empty lock", "latchkey.kv.put", `{"key":"k","value":"aGk=","fence":{"lock":"","token":"1"}}`, 400},
		{"put: fence with zero token", "latchkey.kv.put", `{"key":"k","value":"aGk=","fence":{"lock":"L","token":"0"}}`, 400},
		{"delete: fence with empty lock", "latchkey.kv.delete", `{"key":"k","fence":{"lock":"","token":"1"}}`, 400},
		{"delete: fence with zero token", "latchkey.kv.delete", `{"key":"k","fence":{"lock":"L"}}`, 400},
		{"malformed JSON", "latchkey.kv.put", `{"key":"k","value":`, 400},
		{"unknown JSON field", "latchkey.kv.get", `{"key":"k","colour":"blue"}`, 400},
		{"value not base64", "latchkey.kv.put", `{"key":"k","value":"not base64!"}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			reply := rawRequest(t, env.nc, tt.subject, []byte(tt.body))
			assertErrorReply(t, reply, tt.code, true)
		})
	}
	t.Run("malformed protobuf", func(t *testing.T) {
		// Field 1 (key) claims 100 bytes but the body ends after 2.
		reply := rawRequest(t, env.nc, "latchkey.kv.get", []byte{0x0a, 100, 'a', 'b'})
		assertErrorReply(t, reply, 400, false)
	})
	t.Run("protobuf key of 1025 bytes", func(t *testing.T) {
		body, _ := proto.Marshal(&pb.PutRequest{Key: big(1025)})
		assertErrorReply(t, rawRequest(t, env.nc, "latchkey.kv.put", body), 413, false)
	})
	t.Run("nothing was written", func(t *testing.T) {
		if _, err := env.c.Get(context.Background(), "k"); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("after refused writes, Get(k) = %v; want ErrNotFound", err)
		}
	})
}

// assertErrorReply checks the micro error headers and the body: protojson
// for a JSON request, protobuf otherwise.
func assertErrorReply(t *testing.T, reply *nats.Msg, code int, asJSON bool) {
	t.Helper()
	if got := reply.Header.Get(apierr.HeaderCode); got != strconv.Itoa(code) {
		t.Fatalf("%s = %q (%s); want %d", apierr.HeaderCode, got, reply.Header.Get(apierr.HeaderMessage), code)
	}
	if reply.Header.Get(apierr.HeaderMessage) == "" {
		t.Fatalf("no %s sentence", apierr.HeaderMessage)
	}
	body := &pb.Error{}
	var err error
	if asJSON {
		err = protojson.Unmarshal(reply.Data, body)
	} else {
		err = proto.Unmarshal(reply.Data, body)
	}
	if err != nil {
		t.Fatalf("error body %q does not decode (json=%v): %v", reply.Data, asJSON, err)
	}
	if body.GetCode() != int32(code) || body.GetReason() == "" || body.GetMessage() == "" {
		t.Fatalf("error body = %v; want code %d with a reason and a message", body, code)
	}
}

func TestKVJSONRoundTrip(t *testing.T) {
	env := newKVEnv(t)
	decode := func(m *nats.Msg) map[string]any {
		t.Helper()
		if code := m.Header.Get(apierr.HeaderCode); code != "" {
			t.Fatalf("error %s: %s", code, m.Header.Get(apierr.HeaderMessage))
		}
		var v map[string]any
		if err := json.Unmarshal(m.Data, &v); err != nil {
			t.Fatalf("reply %q is not JSON: %v", m.Data, err)
		}
		return v
	}

	put := decode(rawRequest(t, env.nc, "latchkey.kv.put", []byte(`{"key":"user:42","value":"aGVsbG8="}`)))
	rev, ok := put["revision"].(string) // protojson writes uint64 as a string
	if !ok || rev == "" || rev == "0" {
		t.Fatalf("put reply = %v; want a revision string", put)
	}
	get := decode(rawRequest(t, env.nc, "latchkey.kv.get", []byte(`{"key":"user:42"}`)))
	want := map[string]any{"found": true, "key": "user:42", "value": "aGVsbG8=", "revision": rev}
	if fmt.Sprint(get) != fmt.Sprint(want) {
		t.Fatalf("get reply = %v; want %v", get, want)
	}

	// Requests take snake_case and lowerCamelCase names alike.
	for _, body := range []string{
		`{"key":"user:42","value":"aGk=","expected_revision":"` + rev + `","ttl_ms":"60000"}`,
		`{"key":"user:42","value":"aGk=","expectedRevision":"999999","ttlMs":60000}`,
	} {
		m := rawRequest(t, env.nc, "latchkey.kv.put", []byte(body))
		if strings.Contains(body, "999999") {
			assertErrorReply(t, m, 409, true)
		} else {
			decode(m)
		}
	}
	scan := decode(rawRequest(t, env.nc, "latchkey.kv.scan", []byte(`{"prefix":"user:"}`)))
	items, _ := scan["items"].([]any)
	if len(items) != 1 || items[0].(map[string]any)["value"] != "aGk=" {
		t.Fatalf("scan reply = %v; want one item with the CAS value", scan)
	}
	// A missing key is found:false, not an error; protojson leaves false out.
	miss := decode(rawRequest(t, env.nc, "latchkey.kv.get", []byte(`{"key":"nobody"}`)))
	if found, _ := miss["found"].(bool); found {
		t.Fatalf("get of a missing key = %v", miss)
	}
	// A JSON request with Content-Type but leading whitespace is JSON too.
	msg := &nats.Msg{Subject: "latchkey.kv.get", Data: []byte(` {"key":"user:42"}`), Header: nats.Header{"Content-Type": {"application/json"}}}
	reply, err := env.nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if decode(reply)["key"] != "user:42" {
		t.Fatalf("JSON reply = %s", reply.Data)
	}
}

func TestKVShardDownAnswers503(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	ctx := testCtx(t)
	s, err := suite.Start(ctx, nc, suite.Options{Shards: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Router.Stop(context.Background()) })
	c := client.New(nc)
	if _, err := c.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Storage.Stop(ctx); err != nil {
		t.Fatalf("stopping storage: %v", err)
	}
	// The router must answer (503) rather than let the caller time out:
	// the raw request waits well past the router's 3 s budget.
	for _, req := range []struct{ subject, body string }{
		{"latchkey.kv.get", `{"key":"k"}`},
		{"latchkey.kv.get", `{"key":"k","consistency":"CONSISTENCY_STALE"}`},
		{"latchkey.kv.put", `{"key":"k","value":"aGk="}`},
		{"latchkey.kv.delete", `{"key":"k"}`},
		{"latchkey.kv.scan", `{"prefix":""}`},
	} {
		t.Run(req.subject+" "+req.body, func(t *testing.T) {
			assertErrorReply(t, rawRequest(t, nc, req.subject, []byte(req.body)), 503, true)
		})
	}
	_, err = c.Get(ctx, "k")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("client Get with storage down = %v; want ErrUnavailable", err)
	}
}

func TestMicroDiscovery(t *testing.T) {
	env := newKVEnv(t)
	// The suite does not run a locker; start one so discovery covers all three.
	lk, err := locker.Start(testCtx(t), env.nc, locker.Config{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lk.Stop(context.Background()) })
	expectServices(t, env.nc, "latchkey-router", "latchkey-storage", "latchkey-locker")
}

// expectServices pings every micro service, as `nats micro ls` does, and
// fails unless each wanted service name answers.
func expectServices(t *testing.T, nc *nats.Conn, want ...string) {
	t.Helper()
	subject, err := micro.ControlSubject(micro.PingVerb, "", "")
	if err != nil {
		t.Fatal(err)
	}
	// Every instance answers a ping; collect until each expected name was seen.
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	deadline := time.Now().Add(5 * time.Second)
	for len(seen) < len(want) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("ping answered by %v; want %v: %v", seen, want, err)
		}
		var ping micro.Ping
		if err := json.Unmarshal(m.Data, &ping); err != nil {
			t.Fatalf("ping reply %q: %v", m.Data, err)
		}
		if slices.Contains(want, ping.Name) {
			seen[ping.Name] = true
		}
	}
}

// BenchmarkKV measures the client's calls through router and storage on one
// embedded server, from parallel goroutines sharing one connection.
func BenchmarkKV(b *testing.B) {
	srv, err := natstest.Start(natstest.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	nc := natstest.Connect(b, srv.ClientURL())
	suite.New(b, nc, suite.Options{Shards: 3})
	c := client.New(nc)
	ctx := context.Background()
	value := make([]byte, 64)
	for i := range 1000 {
		if _, err := c.Put(ctx, "bench/"+strconv.Itoa(i), value); err != nil {
			b.Fatal(err)
		}
	}
	run := func(name string, op func(key string) error) {
		b.Run(name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if err := op("bench/" + strconv.Itoa(i%1000)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	run("put", func(k string) error { _, err := c.Put(ctx, k, value); return err })
	run("get", func(k string) error { _, err := c.Get(ctx, k); return err })
	run("get-stale", func(k string) error { _, err := c.Get(ctx, k, client.Stale()); return err })
	b.Run("scan-100", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Scan(ctx, "bench/", client.Limit(100)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
