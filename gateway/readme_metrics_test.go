package gateway

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestREADMENamesTheMetricsServed keeps what the README and the ADRs say of /metrics
// true: every foreman_* name they give is a metric foreman serves, every metric foreman
// serves is in the README, and the README's table gives each its labels. A series may
// have no sample yet (a counter of refusals before the first), so the served metrics are
// those foreman's collectors describe, not those one scrape happens to show.
func TestREADMENamesTheMetricsServed(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	served := describedMetrics(foremanCollectors(b.GW))
	if len(served) == 0 {
		t.Fatal("no metrics described")
	}

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	adrs, err := filepath.Glob("../docs/adr/*.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`\bforeman_[a-z0-9_]*[a-z0-9]`)
	for _, file := range append([]string{"../README.md"}, adrs...) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range name.FindAllString(string(data), -1) {
			if _, ok := served[n]; !ok {
				t.Errorf("%s names %s, which GET /metrics does not serve", file, n)
			}
		}
	}
	for n := range served {
		if !strings.Contains(string(readme), "`"+n+"`") {
			t.Errorf("README.md does not name the metric %s", n)
		}
	}

	// The table: | `name` | type | `label`, `label` (values): meaning |.
	row := regexp.MustCompile("(?m)^\\| `(foreman_[a-z0-9_]+)` \\| [a-z]+ \\| (.*) \\|$")
	labels := regexp.MustCompile("^((?:`[a-z_]+`(?: \\([^)]*\\))?(?:, )?)+)(?::|$)")
	label := regexp.MustCompile("`([a-z_]+)`(?: \\([^)]*\\))?")
	rows := row.FindAllStringSubmatch(string(readme), -1)
	if len(rows) == 0 {
		t.Fatal("README.md: no metrics table")
	}
	for _, r := range rows {
		var documented []string
		if m := labels.FindStringSubmatch(r[2]); m != nil {
			for _, l := range label.FindAllStringSubmatch(m[1], -1) {
				documented = append(documented, l[1])
			}
		}
		if got, ok := served[r[1]]; ok && !slices.Equal(documented, got) {
			t.Errorf("README.md's table gives %s the labels %q; it has %q", r[1], documented, got)
		}
	}
}

// describedMetrics maps the name of each metric the collectors describe to its labels.
func describedMetrics(cs []prometheus.Collector) map[string][]string {
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range cs {
			c.Describe(ch)
		}
		close(ch)
	}()
	// A Desc tells its name and labels only in its String():
	// Desc{fqName: "foreman_jobs_total", help: "...", constLabels: {}, variableLabels: {model,state}}
	desc := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	out := map[string][]string{}
	for d := range ch {
		m := desc.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		var ls []string
		if m[2] != "" {
			ls = strings.Split(m[2], ",")
		}
		out[m[1]] = ls
	}
	return out
}
