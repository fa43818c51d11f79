package tests

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestKVFenceEdgesAtThePublicAPI walks the fence rules of docs/API.md at
// their limits through the router, with tokens the locker really issued:
// a fence next to a TTL, a key at its fence bounds, a made-up token.
func TestKVFenceEdgesAtThePublicAPI(t *testing.T) {
	env := newKVEnv(t)
	acquire := func(name string) string {
		reply := rawRequest(t, env.nc, "latchkey.lock.acquire", []byte(`{"name":"`+name+`","owner":"t","ttl_ms":"60000"}`))
		if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
			t.Fatalf("acquire %s: %s %s", name, code, reply.Header.Get("Nats-Service-Error"))
		}
		resp := &pb.AcquireResponse{}
		if err := protojson.Unmarshal(reply.Data, resp); err != nil {
			t.Fatalf("acquire reply %s: %v", reply.Data, err)
		}
		return strconv.FormatUint(resp.Token, 10)
	}
	ok := func(subject, body string) {
		t.Helper()
		reply := rawRequest(t, env.nc, subject, []byte(body))
		if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
			t.Fatalf("%s %s: %s %s", subject, body, code, reply.Header.Get("Nats-Service-Error"))
		}
	}
	fencedPut := func(key, lock, tok string) string {
		return `{"key":"` + key + `","value":"aGk=","fence":{"lock":"` + lock + `","token":"` + tok + `"}}`
	}
	tokL := acquire("L")
	ok("latchkey.kv.put", fencedPut("fenced", "L", tokL))
	ok("latchkey.kv.delete", `{"key":"gone","fence":{"lock":"L","token":"`+tokL+`"}}`)
	var last string
	for i := range 32 {
		name := fmt.Sprintf("lock-%02d", i)
		last = acquire(name)
		ok("latchkey.kv.put", fencedPut("full", name, last))
	}
	extra := acquire("lock-extra")

	tests := []struct {
		rule    string
		subject string
		body    string
		code    int
		reason  apierr.Reason
	}{
		{"put: fence and ttl_ms together", "latchkey.kv.put", `{"key":"k","value":"aGk=","ttl_ms":"1000","fence":{"lock":"L","token":"` + tokL + `"}}`, 400, apierr.ReasonFenceWithTTL},
		{"put: ttl_ms on a fenced key", "latchkey.kv.put", `{"key":"fenced","value":"aGk=","ttl_ms":"5000"}`, 409, apierr.ReasonFencedKeyTTL},
		{"put: ttl_ms on a deleted fenced key", "latchkey.kv.put", `{"key":"gone","value":"aGk=","ttl_ms":"5000"}`, 409, apierr.ReasonFencedKeyTTL},
		{"put: a token never issued", "latchkey.kv.put", fencedPut("k", "L", "99999999"), 400, apierr.ReasonUnknownToken},
		{"delete: a token never issued", "latchkey.kv.delete", `{"key":"fenced","fence":{"lock":"L","token":"18446744073709551615"}}`, 400, apierr.ReasonUnknownToken},
		{"put: a 33rd lock on one key", "latchkey.kv.put", fencedPut("full", "lock-extra", extra), 409, apierr.ReasonTooManyFences},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			reply := rawRequest(t, env.nc, tt.subject, []byte(tt.body))
			assertErrorReply(t, reply, tt.code, true)
			body := &pb.Error{}
			if err := protojson.Unmarshal(reply.Data, body); err != nil || body.Reason != string(tt.reason) {
				t.Fatalf("reason %q (%v); want %q", body.Reason, err, tt.reason)
			}
		})
	}
	t.Run("a key at its bounds stays writable", func(t *testing.T) {
		ok("latchkey.kv.put", `{"key":"full","value":"aGk="}`)
		ok("latchkey.kv.put", fencedPut("full", "lock-31", last))
		ok("latchkey.kv.put", `{"key":"fenced","value":"aGk="}`)
	})
}
