package iptables

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeBinary writes an executable shell script named name into dir.
func fakeBinary(t *testing.T, dir, name, script string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// A process that does not finish is killed at its timeout, and the error
// says which command timed out.
func TestRunBoundedTimeout(t *testing.T) {
	dir := t.TempDir()
	// exec: the shell becomes sleep, so the kill reaches it.
	hang := fakeBinary(t, dir, "iptables-restore", "exec sleep 60")
	start := time.Now()
	_, _, err := runBounded(200*time.Millisecond, "*nat\nCOMMIT\n", hang, "-w", "5", "--noflush")
	took := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if want := "iptables-restore -w 5 --noflush: timed out after 200ms"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to contain %q", err, want)
	}
	if took > 5*time.Second {
		t.Errorf("returned after %v", took)
	}

	// A child that keeps the pipes open does not hold the caller past
	// the kill for longer than WaitDelay.
	orphan := fakeBinary(t, dir, "iptables", "sleep 60 & sleep 60")
	start = time.Now()
	_, _, err = runBounded(200*time.Millisecond, "", orphan, "-S")
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 5*time.Second {
		t.Fatalf("with an orphan holding the pipes: err = %v after %v", err, time.Since(start))
	}

	// A failure that is not a timeout is not reported as one.
	fail := fakeBinary(t, dir, "iptables-save", "echo broken >&2; exit 4")
	_, stderr, err := runBounded(time.Minute, "", fail)
	if err == nil || errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "iptables-save") || stderr != "broken\n" {
		t.Fatalf("err = %v, stderr %q", err, stderr)
	}
}

// Every iptables and iptables-restore process waits at most lockWait for
// the xtables lock: the arguments each call passes, recorded by stand-in
// binaries.
func TestIptablesTablesArguments(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	record := `echo "$(basename "$0") $*" >> ` + log + `; cat > /dev/null`
	tables := &IptablesTables{
		path:           fakeBinary(t, dir, "iptables", `echo "$(basename "$0") $*" >> `+log),
		restorePath:    fakeBinary(t, dir, "iptables-restore", record),
		savePath:       fakeBinary(t, dir, "iptables-save", `echo "$(basename "$0") $*" >> `+log),
		restoreTimeout: time.Minute, commandTimeout: time.Minute,
	}
	if _, err := tables.ListTable(TableNAT); err != nil {
		t.Fatal(err)
	}
	if _, err := tables.ListTables([]Table{TableNAT}); err != nil {
		t.Fatal(err)
	}
	if err := tables.ReplaceChains([]Chain{{Table: TableNAT, Name: chainServices}}); err != nil {
		t.Fatal(err)
	}
	if err := tables.DeleteChains(TableNAT, []string{chainServices}); err != nil {
		t.Fatal(err)
	}
	j := Jumps[0]
	if err := tables.InsertJump(j); err != nil {
		t.Fatal(err)
	}
	if err := tables.DeleteJump(j); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	rule := j.Rule().String()
	want := strings.Join([]string{
		"iptables -w 5 -t nat -S",
		"iptables-save ",
		"iptables-restore -w 5 --noflush",
		"iptables-restore -w 5 --noflush",
		"iptables -w 5 -t " + string(j.Table) + " -I " + j.From + " 1 " + strings.ReplaceAll(rule, `"`, ""),
		"iptables -w 5 -t " + string(j.Table) + " -D " + j.From + " " + strings.ReplaceAll(rule, `"`, ""),
	}, "\n") + "\n"
	if string(got) != want {
		t.Errorf("commands run:\n%s\nwant:\n%s", got, want)
	}
}

// A hung iptables-restore fails the apply with a timeout naming it,
// instead of holding the sync forever.
func TestApplyRestoreTimeout(t *testing.T) {
	dir := t.TempDir()
	ok := fakeBinary(t, dir, "iptables", "exit 0")
	hang := fakeBinary(t, dir, "iptables-restore", "exec sleep 60")
	a := &Applier{IPSet: NewFakeIPSet(), Tables: map[Family]Tables{IPv4: &IptablesTables{
		path: ok, restorePath: hang, restoreTimeout: 200 * time.Millisecond, commandTimeout: time.Minute}}}
	_, err := a.Apply(Plan(singleService(nil), Config{Families: []Family{IPv4}}))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "iptables-restore -w 5 --noflush: timed out") {
		t.Fatalf("err = %v, want the restore's timeout", err)
	}
}
