package kvmodel_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/latchkey/latchkey/check/kvmodel"
)

type op struct {
	client    int
	call, ret int64
	in        kvmodel.Input
	out       kvmodel.Output
}

func history(ops []op) []porcupine.Operation {
	h := make([]porcupine.Operation, len(ops))
	for i, o := range ops {
		h[i] = porcupine.Operation{ClientId: o.client, Call: o.call, Return: o.ret, Input: o.in, Output: o.out}
	}
	return h
}

// The model must accept real behaviour and reject the anomalies a broken
// store would show; otherwise a green linearizability test means nothing.
func TestModelAcceptsAndRejects(t *testing.T) {
	put := func(v string) kvmodel.Input { return kvmodel.Input{Op: kvmodel.Put, Key: "k", Value: v} }
	get := kvmodel.Input{Op: kvmodel.Get, Key: "k"}
	fput := func(v string, token uint64) kvmodel.Input {
		return kvmodel.Input{Op: kvmodel.Put, Key: "k", Value: v, Fence: token}
	}
	cas := func(v string, e uint64) kvmodel.Input {
		return kvmodel.Input{Op: kvmodel.CAS, Key: "k", Value: v, Expected: e}
	}
	lput := func(v, lock string, token uint64) kvmodel.Input {
		return kvmodel.Input{Op: kvmodel.Put, Key: "k", Value: v, Fence: token, Lock: lock}
	}
	tput := func(v string) kvmodel.Input {
		return kvmodel.Input{Op: kvmodel.Put, Key: "k", Value: v, TTL: time.Second}
	}
	expire := func(v string) kvmodel.Input { return kvmodel.Input{Op: kvmodel.Expire, Key: "k", Value: v} }
	// manyLocks: n-1 accepted fenced puts of distinct locks, then one more
	// lock's with the outcome last.
	manyLocks := func(n int, last kvmodel.Output) []op {
		var ops []op
		for i := range n {
			out := kvmodel.Output{Rev: uint64(i + 1)}
			if i == n-1 {
				out = last
			}
			ops = append(ops, op{0, int64(2 * i), int64(2*i + 1), lput(fmt.Sprint("v", i), fmt.Sprint("lock-", i), 1), out})
		}
		return ops
	}
	cases := []struct {
		name string
		ops  []op
		want bool
	}{
		{"read after write", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{1, 2, 3, get, kvmodel.Output{Found: true, Value: "a", Rev: 5}},
		}, true},
		{"stale read after acknowledged write", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{0, 2, 3, put("b"), kvmodel.Output{Rev: 6}},
			{1, 4, 5, get, kvmodel.Output{Found: true, Value: "a", Rev: 5}},
		}, false},
		{"concurrent read may see either", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{0, 2, 6, put("b"), kvmodel.Output{Rev: 6}},
			{1, 3, 4, get, kvmodel.Output{Found: true, Value: "a", Rev: 5}},
		}, true},
		{"two CAS on one revision both win", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{1, 2, 4, cas("b", 5), kvmodel.Output{Rev: 6}},
			{2, 2, 4, cas("c", 5), kvmodel.Output{Rev: 7}},
		}, false},
		{"CAS conflict while the revision matched", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{1, 2, 3, cas("b", 5), kvmodel.Output{Conflict: true}},
		}, false},
		{"unknown write may surface later", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Unknown: true}},
			{1, 2, 3, get, kvmodel.Output{Found: true, Value: "a", Rev: 9}},
			{1, 4, 5, cas("b", 9), kvmodel.Output{Rev: 10}},
		}, true},
		{"read of a deleted key", []op{
			{0, 0, 1, put("a"), kvmodel.Output{Rev: 5}},
			{0, 2, 3, kvmodel.Input{Op: kvmodel.Del, Key: "k"}, kvmodel.Output{Found: true}},
			{1, 4, 5, get, kvmodel.Output{Found: true, Value: "a", Rev: 5}},
		}, false},
		{"stale fence refused after a newer holder wrote", []op{
			{0, 0, 1, fput("a", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, fput("b", 5), kvmodel.Output{Conflict: true}},
		}, true},
		{"stale fence accepted after a newer holder wrote", []op{
			{0, 0, 1, fput("a", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, fput("b", 5), kvmodel.Output{Rev: 4}},
		}, false},
		{"fence survives unfenced writes and deletes", []op{
			{0, 0, 1, fput("a", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, put("b"), kvmodel.Output{Rev: 4}},
			{1, 4, 5, kvmodel.Input{Op: kvmodel.Del, Key: "k"}, kvmodel.Output{Found: true}},
			{1, 6, 7, fput("c", 5), kvmodel.Output{Rev: 6}},
		}, false},
		{"fenced delete of an absent key raises the fence", []op{
			{0, 0, 1, kvmodel.Input{Op: kvmodel.Del, Key: "k", Fence: 9}, kvmodel.Output{}},
			{1, 2, 3, fput("c", 8), kvmodel.Output{Conflict: true}},
		}, true},
		{"current token refused", []op{
			{0, 0, 1, fput("a", 7), kvmodel.Output{Rev: 3}},
			{0, 2, 3, fput("b", 7), kvmodel.Output{Conflict: true}},
		}, false},
		{"unknown fenced write may have raised the fence", []op{
			{0, 0, 1, fput("a", 7), kvmodel.Output{Unknown: true}},
			{1, 2, 3, fput("b", 5), kvmodel.Output{Conflict: true}},
		}, true},
		{"a TTL'd value vanishes inside its expiry window", []op{
			{0, 0, 1, tput("a"), kvmodel.Output{Rev: 3}},
			{9, 10, 20, expire("a"), kvmodel.Output{}},
			{1, 2, 3, get, kvmodel.Output{Found: true, Value: "a", Rev: 3}},
			{1, 15, 16, get, kvmodel.Output{}},
		}, true},
		{"a TTL'd value vanishes before its window", []op{
			{0, 0, 1, tput("a"), kvmodel.Output{Rev: 3}},
			{9, 10, 20, expire("a"), kvmodel.Output{}},
			{1, 5, 6, get, kvmodel.Output{}},
		}, false},
		{"a TTL'd value outlives its window", []op{
			{0, 0, 1, tput("a"), kvmodel.Output{Rev: 3}},
			{9, 10, 20, expire("a"), kvmodel.Output{}},
			{1, 21, 22, get, kvmodel.Output{Found: true, Value: "a", Rev: 3}},
		}, false},
		{"the expiry swallows a put acknowledged at the expiry instant", []op{
			{0, 0, 1, tput("a"), kvmodel.Output{Rev: 3}},
			{9, 10, 20, expire("a"), kvmodel.Output{}},
			{1, 11, 12, put("b"), kvmodel.Output{Rev: 4}},
			{1, 25, 26, get, kvmodel.Output{}},
		}, false},
		{"a put at the expiry instant survives it", []op{
			{0, 0, 1, tput("a"), kvmodel.Output{Rev: 3}},
			{9, 10, 20, expire("a"), kvmodel.Output{}},
			{1, 11, 12, put("b"), kvmodel.Output{Rev: 5}},
			{1, 25, 26, get, kvmodel.Output{Found: true, Value: "b", Rev: 5}},
		}, true},
		{"a TTL on a fenced key is refused", []op{
			{0, 0, 1, lput("a", "l1", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, tput("b"), kvmodel.Output{Conflict: true}},
		}, true},
		{"a TTL on a fenced key accepted", []op{
			{0, 0, 1, lput("a", "l1", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, tput("b"), kvmodel.Output{Rev: 4}},
		}, false},
		{"a fence with a TTL acknowledged", []op{
			{0, 0, 1, kvmodel.Input{Op: kvmodel.Put, Key: "k", Value: "a", Fence: 3, Lock: "l", TTL: time.Second}, kvmodel.Output{Rev: 3}},
		}, false},
		{"fences of two locks are separate", []op{
			{0, 0, 1, lput("a", "l1", 7), kvmodel.Output{Rev: 3}},
			{1, 2, 3, lput("b", "l2", 5), kvmodel.Output{Rev: 4}},
			{1, 4, 5, lput("c", "l1", 6), kvmodel.Output{Conflict: true}},
		}, true},
		{"the 33rd lock accepted", manyLocks(33, kvmodel.Output{Rev: 100}), false},
		{"the 33rd lock refused", manyLocks(33, kvmodel.Output{Conflict: true}), true},
		{"the 32nd lock refused", manyLocks(32, kvmodel.Output{Conflict: true}), false},
		{"create if absent twice", []op{
			{0, 0, 1, cas("a", 0), kvmodel.Output{Rev: 3}},
			{1, 2, 3, cas("b", 0), kvmodel.Output{Rev: 4}},
		}, false},
	}
	for _, c := range cases {
		if got := porcupine.CheckOperations(kvmodel.Model(), history(c.ops)); got != c.want {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.want)
		}
	}
}
