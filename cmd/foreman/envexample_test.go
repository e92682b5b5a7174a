package main

import (
	"os"
	"strings"
	"testing"
)

// TestEnvExampleListsEverySetting keeps deploy/.env.example and the README's table true to
// the settings serve really reads.
func TestEnvExampleListsEverySetting(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"../../deploy/.env.example", "../../README.md"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range (&serveConfig{}).settings() {
			if !strings.Contains(string(data), s.env) {
				t.Errorf("%s does not mention %s", file, s.env)
			}
			if file == "../../README.md" && !strings.Contains(string(data), "`--"+s.flag+"`") {
				t.Errorf("%s does not mention the flag --%s", file, s.flag)
			}
		}
	}
}

// TestDocumentedDefaultsAreServes keeps the defaults the README's settings table and
// deploy/.env.example show equal to those serve really uses (its flags' defaults): an
// operator who leaves a setting out gets what the docs say. They are compared as written,
// not as durations: `serve --help` shows the flag's default, and said "60s" where the
// docs said "1m". A default cell that is one
// value in backticks is a claim; one in words ("off", "host name", "4 × ...") is read by
// people only, and then the flag must have no fixed default of its own to contradict it.
func TestDocumentedDefaultsAreServes(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../deploy/.env.example")
	if err != nil {
		t.Fatal(err)
	}
	table := readmeSettingDefaults(t, string(readme))
	for _, s := range (&serveConfig{}).settings() {
		cell, ok := table[s.env]
		if !ok {
			t.Errorf("README: the settings table has no row for %s", s.env)
			continue
		}
		if v, claim := backticked(cell); claim {
			if v != s.def {
				t.Errorf("README: the settings table says %s defaults to %q; serve's is %q", s.env, v, s.def)
			}
		} else if s.def != "" && !strings.Contains(cell, "`"+s.def+"`") {
			t.Errorf("README: the settings table's default of %s, %q, does not show serve's %q", s.env, cell, s.def)
		}
		if s.def == "" {
			continue
		}
		// .env.example shows each setting as a commented line with its value.
		for _, line := range strings.Split(string(example), "\n") {
			v, found := strings.CutPrefix(strings.TrimPrefix(line, "#"), s.env+"=")
			if found && v != "" && v != s.def {
				t.Errorf("deploy/.env.example: %s=%s, but serve's default is %q", s.env, v, s.def)
			}
		}
	}
}

// readmeSettingDefaults maps each variable of the README's settings table (a row's first
// cell, "`A` / `B`" naming two) to its default cell.
func readmeSettingDefaults(t *testing.T, readme string) map[string]string {
	t.Helper()
	const header = "| variable | flag | default | meaning |"
	start := strings.Index(readme, header)
	if start < 0 {
		t.Fatalf("README: no settings table (%q)", header)
	}
	defaults := map[string]string{}
	for _, line := range strings.Split(readme[start:], "\n")[2:] {
		if !strings.HasPrefix(line, "| ") {
			break
		}
		cells := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|"), "|")
		if len(cells) < 4 {
			t.Fatalf("README: a settings row without its four cells: %s", line)
		}
		for _, name := range strings.Split(strings.TrimSpace(cells[0]), " / ") {
			defaults[strings.Trim(name, "`")] = strings.TrimSpace(cells[2])
		}
	}
	return defaults
}

// backticked is the value of a cell that is one `value`.
func backticked(cell string) (string, bool) {
	if len(cell) < 2 || cell[0] != '`' || cell[len(cell)-1] != '`' || strings.Count(cell, "`") != 2 {
		return "", false
	}
	return cell[1 : len(cell)-1], true
}

// A flag's help states its default once: in its usage, in words, for a default that
// depends on the machine or on other settings, else as pflag's (default "..."). The
// target name's said "(default: the host name) ... (default "vm")".
func TestServeHelpStatesEachDefaultOnce(t *testing.T) {
	t.Parallel()
	for _, s := range (&serveConfig{}).settings() {
		if s.def != "" && strings.Contains(s.usage, "(default") {
			t.Errorf("--%s: its usage says %q and its flag's default is %q", s.flag, s.usage, s.def)
		}
	}
	r := runCLI(t, nil, nil, nil, "serve", "--help")
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Count(line, "(default") > 1 {
			t.Errorf("serve --help states a default twice: %s", line)
		}
	}
	if !strings.Contains(r.stdout, "[FOREMAN_SYNC_OUTAGE_WAIT] (default \"1m\")") {
		t.Errorf("serve --help does not show FOREMAN_SYNC_OUTAGE_WAIT's default as the docs write it, 1m:\n%s", r.stdout)
	}
}
