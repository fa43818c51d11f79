package main

import (
	"errors"
	"flag"
	"slices"
	"testing"

	"github.com/latchkey/latchkey/client"
)

func TestParseArgsAllowsFlagsAnywhere(t *testing.T) {
	tests := []struct {
		args    []string
		pos     []string
		json    bool
		usage   bool
		wantErr bool
	}{
		{args: []string{"k", "v"}, pos: []string{"k", "v"}},
		{args: []string{"--json", "k", "v"}, pos: []string{"k", "v"}, json: true},
		{args: []string{"k", "--json", "v"}, pos: []string{"k", "v"}, json: true},
		{args: []string{"k", "v", "--json"}, pos: []string{"k", "v"}, json: true},
		{args: []string{"k", "-"}, pos: []string{"k", "-"}},
		{args: []string{"k", "--", "-5", "--json"}, pos: []string{"k", "-5", "--json"}},
		{args: []string{"k", "--nope"}, usage: true, wantErr: true},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(discard{})
		asJSON := fs.Bool("json", false, "")
		pos, err := parseArgs(fs, tt.args)
		if (err != nil) != tt.wantErr {
			t.Fatalf("%q: err = %v", tt.args, err)
		}
		if tt.usage && exitCode(err) != exitUsage {
			t.Fatalf("%q: exit code %d; want %d", tt.args, exitCode(err), exitUsage)
		}
		if !tt.wantErr && (!slices.Equal(pos, tt.pos) || *asJSON != tt.json) {
			t.Fatalf("%q: pos %q json %v; want %q %v", tt.args, pos, *asJSON, tt.pos, tt.json)
		}
	}
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		err  error
		code int
	}{
		{nil, exitOK},
		{flag.ErrHelp, exitOK},
		{usagef("x"), exitUsage},
		{&unreachableError{server: "s", err: errors.New("refused")}, exitUnavailable},
		{&client.Error{Kind: client.ErrUnavailable}, exitUnavailable},
		{&client.Error{Kind: client.ErrNotFound}, exitNotFound},
		{&client.Error{Kind: client.ErrConflict}, exitConflict},
		{&client.Error{Kind: client.ErrInvalid}, exitError},
		{errors.New("other"), exitError},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.code {
			t.Errorf("exitCode(%v) = %d; want %d", tt.err, got, tt.code)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
