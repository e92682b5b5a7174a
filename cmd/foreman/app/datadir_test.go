package app

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A data directory that cannot be made (its path runs through a file), or that another
// foreman holds, stops the start with an error that names FOREMAN_DATA_DIR and the path,
// not only the file system's words about a path the operator has to place.
func TestStartNamesTheDataDirItCannotUse(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	held := t.TempDir()
	srv, err := natsd.Start(natsd.Config{DataDir: held})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	for dir, cause := range map[string]error{filepath.Join(file, "data"): natsd.ErrDataDir, held: natsd.ErrLocked} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: dir}, slog.New(slog.DiscardHandler))
		cancel()
		if err == nil {
			_ = a.Shutdown(context.Background())
			t.Fatalf("started on data directory %s", dir)
		}
		if !errors.Is(err, cause) || !strings.Contains(err.Error(), "FOREMAN_DATA_DIR="+strconv.Quote(dir)) {
			t.Errorf("start on %s: %v; want %v, naming FOREMAN_DATA_DIR", dir, err, cause)
		}
	}
}

// With FOREMAN_DATA_DIR unset, the directory foreman cannot make is said to be the
// default one, and FOREMAN_DATA_DIR named as the setting that chooses another.
func TestStartNamesTheDefaultDataDirItCannotUse(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_DATA_HOME", file) // the default directory would be made under a file
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(context.Background())
		t.Fatal("started on a default data directory under a file")
	}
	want := "the default data directory " + strconv.Quote(filepath.Join(file, "foreman")) + " (FOREMAN_DATA_DIR is unset)"
	if !errors.Is(err, natsd.ErrDataDir) || !strings.Contains(err.Error(), want) {
		t.Errorf("start: %v; want %v, containing %q", err, natsd.ErrDataDir, want)
	}
}
