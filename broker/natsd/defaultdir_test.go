package natsd_test

import (
	"path/filepath"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// The default data dir is where each system keeps an application's data, and
// XDG_DATA_HOME, when set, wins everywhere.
func TestDefaultDataDirPerSystem(t *testing.T) {
	home := filepath.Join("h", "me")
	local := filepath.Join("h", "me", "AppData", "Local")
	xdg := filepath.Join("x", "data")
	for _, c := range []struct {
		goos string
		env  map[string]string
		want string
	}{
		{"linux", nil, filepath.Join(home, ".local", "share", "foreman")},
		{"freebsd", nil, filepath.Join(home, ".local", "share", "foreman")},
		{"darwin", nil, filepath.Join(home, "Library", "Application Support", "foreman")},
		{"windows", map[string]string{"LocalAppData": filepath.Join("d", "Local")}, filepath.Join("d", "Local", "foreman")},
		{"windows", nil, filepath.Join(local, "foreman")},
		{"linux", map[string]string{"XDG_DATA_HOME": xdg}, filepath.Join(xdg, "foreman")},
		{"darwin", map[string]string{"XDG_DATA_HOME": xdg}, filepath.Join(xdg, "foreman")},
		{"windows", map[string]string{"XDG_DATA_HOME": xdg, "LocalAppData": "l"}, filepath.Join(xdg, "foreman")},
		// LocalAppData means nothing off Windows.
		{"linux", map[string]string{"LocalAppData": "l"}, filepath.Join(home, ".local", "share", "foreman")},
	} {
		got, err := natsd.DefaultDataDirOn(c.goos, c.env, home)
		if err != nil || got != c.want {
			t.Errorf("%s %v: %q, %v; want %q", c.goos, c.env, got, err, c.want)
		}
	}
	if got, err := natsd.DefaultDataDirOn("linux", nil, ""); err == nil {
		t.Errorf("no home: %q, want an error", got)
	}
	// With LocalAppData set, Windows needs no home.
	if got, err := natsd.DefaultDataDirOn("windows", map[string]string{"LocalAppData": "l"}, ""); err != nil || got != filepath.Join("l", "foreman") {
		t.Errorf("windows, no home: %q, %v", got, err)
	}
}
