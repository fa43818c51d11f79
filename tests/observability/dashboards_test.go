package observability_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// compose is the deployment directory the dashboards ship in.
var compose = filepath.Join("..", "..", "deploy", "compose")

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource *datasourceRef  `json:"datasource"`
	Targets    []target        `json:"targets"`
	GridPos    map[string]int  `json:"gridPos"`
	Panels     json.RawMessage `json:"panels"` // rows nest panels; ours have none
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID      string         `json:"refId"`
	Datasource *datasourceRef `json:"datasource"`
	Expr       string         `json:"expr"`
}

type datasources struct {
	APIVersion  int `yaml:"apiVersion"`
	Datasources []struct {
		Name string `yaml:"name"`
		UID  string `yaml:"uid"`
		Type string `yaml:"type"`
		URL  string `yaml:"url"`
	} `yaml:"datasources"`
}

type providers struct {
	APIVersion int `yaml:"apiVersion"`
	Providers  []struct {
		Name    string `yaml:"name"`
		Type    string `yaml:"type"`
		Options struct {
			Path string `yaml:"path"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !strings.Contains(err.Error(), "not found in type") {
		t.Fatalf("%s: %v", path, err)
	}
}

// loadDashboards reads every dashboard JSON file shipped for Grafana.
func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(compose, "grafana", "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards found: %v", err)
	}
	out := map[string]dashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s is not valid JSON: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

// TestDashboardsMatchProvisioning checks the Grafana files against each
// other, since no Grafana can run here: the provider loads the directory
// compose.yaml mounts the dashboards on, every panel's datasource uid is
// provisioned, panels have operator-facing titles and queries, and the
// three dashboards the docs promise exist.
func TestDashboardsMatchProvisioning(t *testing.T) {
	var ds datasources
	readYAML(t, filepath.Join(compose, "grafana", "provisioning", "datasources", "datasources.yaml"), &ds)
	uids := map[string]string{}
	for _, d := range ds.Datasources {
		uids[d.UID] = d.Type
	}
	for uid, url := range map[string]string{"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"} {
		found := false
		for _, d := range ds.Datasources {
			if d.UID == uid {
				found = d.URL == url && d.Type == uid
			}
		}
		if !found {
			t.Errorf("datasources.yaml: want a %s datasource with uid %q at %s", uid, uid, url)
		}
	}

	var pv providers
	readYAML(t, filepath.Join(compose, "grafana", "provisioning", "dashboards", "dashboards.yaml"), &pv)
	const mount = "/var/lib/grafana/dashboards"
	if len(pv.Providers) != 1 || pv.Providers[0].Type != "file" || pv.Providers[0].Options.Path != mount {
		t.Errorf("dashboards.yaml: want one file provider with path %s, got %+v", mount, pv.Providers)
	}
	if b, err := os.ReadFile(filepath.Join(compose, "compose.yaml")); err == nil {
		if !strings.Contains(string(b), "./grafana/dashboards:"+mount) || !strings.Contains(string(b), "./grafana/provisioning:/etc/grafana/provisioning") {
			t.Errorf("compose.yaml does not mount ./grafana/dashboards on %s and ./grafana/provisioning on /etc/grafana/provisioning", mount)
		}
	} else {
		t.Logf("compose.yaml not found (%v); mount points not checked", err)
	}

	dashboards := loadDashboards(t)
	for _, want := range []string{"overview.json", "shards.json", "locks.json"} {
		if _, ok := dashboards[want]; !ok {
			t.Errorf("dashboard %s missing", want)
		}
	}
	seenUID := map[string]bool{}
	for file, d := range dashboards {
		if d.UID == "" || d.Title == "" || seenUID[d.UID] {
			t.Errorf("%s: uid %q title %q: both required, uid unique", file, d.UID, d.Title)
		}
		seenUID[d.UID] = true
		ids := map[int]bool{}
		for _, p := range d.Panels {
			where := file + ": panel " + strings.TrimSpace(p.Title)
			if len(p.Title) < 15 || ids[p.ID] || p.ID == 0 {
				t.Errorf("%s (id %d): a panel needs a unique id and a title that tells an operator what it shows", where, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos["w"] == 0 || p.GridPos["h"] == 0 {
				t.Errorf("%s: no size (gridPos)", where)
			}
			if len(p.Panels) > 0 && string(p.Panels) != "null" {
				t.Errorf("%s: nested panels are not supported by this test", where)
			}
			if p.Datasource == nil || uids[p.Datasource.UID] != p.Datasource.Type {
				t.Errorf("%s: datasource %+v is not provisioned (have %v)", where, p.Datasource, uids)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			for _, tg := range p.Targets {
				ref := p.Datasource
				if tg.Datasource != nil {
					ref = tg.Datasource
				}
				if ref == nil || uids[ref.UID] != ref.Type {
					t.Errorf("%s: target %s uses datasource %+v, not provisioned", where, tg.RefID, ref)
				}
				if ref != nil && ref.Type == "prometheus" && tg.Expr == "" {
					t.Errorf("%s: target %s has no expr", where, tg.RefID)
				}
			}
		}
	}
}

// panelQuery is one PromQL query of a dashboard panel.
type panelQuery struct {
	where string // dashboard, panel and target, for messages
	expr  string
}

// grafanaVars are the variables our dashboards may use, with the values
// the tests evaluate them at (scrapes every second).
var grafanaVars = map[string]string{"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}

var leftoverVar = regexp.MustCompile(`\$\{?[A-Za-z_]\w*`)

// promQueries returns every Prometheus query of every dashboard, with
// Grafana's variables replaced; it fails on a variable it cannot replace.
func promQueries(t *testing.T) []panelQuery {
	t.Helper()
	var out []panelQuery
	files := slices.Sorted(func(yield func(string) bool) {
		for f := range loadDashboards(t) {
			if !yield(f) {
				return
			}
		}
	})
	dashboards := loadDashboards(t)
	for _, file := range files {
		for _, p := range dashboards[file].Panels {
			for _, tg := range p.Targets {
				ref := p.Datasource
				if tg.Datasource != nil {
					ref = tg.Datasource
				}
				if ref == nil || ref.Type != "prometheus" {
					continue
				}
				expr := tg.Expr
				for v, val := range grafanaVars {
					expr = strings.ReplaceAll(expr, v, val)
				}
				if m := leftoverVar.FindString(expr); m != "" {
					t.Errorf("%s / %s: variable %s is not one the test knows how to fill", file, p.Title, m)
					continue
				}
				out = append(out, panelQuery{where: file + " / " + p.Title + " / " + tg.RefID, expr: expr})
			}
		}
	}
	return out
}

// TestPrometheusConfigScrapesEveryService checks the compose deployment's
// scrape configuration with promtool, and that it names every service's
// metrics port.
func TestPrometheusConfigScrapesEveryService(t *testing.T) {
	path := filepath.Join(compose, "prometheus", "prometheus.yml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"router-1:9101", "router-2:9101", "storage-a:9102", "storage-b:9102", "locker-1:9103", "locker-2:9103"} {
		if !strings.Contains(string(b), `"`+target+`"`) {
			t.Errorf("prometheus.yml does not scrape %s", target)
		}
	}
	promtool := needBinary(t, "promtool", "install Debian's prometheus package (apt-get install prometheus)",
		os.Getenv("LATCHKEY_PROMTOOL_BIN"), "/usr/bin/promtool")
	if out, err := runOutput(promtool, "check", "config", path); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}
