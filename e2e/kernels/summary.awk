# Reads one guest's result log (the markers init.sh writes, the output of
# `sockhop doctor` and of each test binary run with -test.v) and prints a
# report for one kernel, ending in a line the driver reads:
#   @@ verdict=<ok|failed|unsupported|incomplete> passed=N failed=N skipped=N
# preceded, when doctor failed, by "@@ reason <doctor's failures>", and by
# "@@ pass <package> <test>" for each top-level test that passed.
# Counts are of top-level tests; failed and skipped subtests are listed too.
# A binary that exits non-zero without a failed test (a panic, a timeout)
# counts as one failure, and so does anything the tests left behind. When
# doctor fails, the datapath cannot run on this kernel: the verdict is
# "unsupported" with doctor's reasons, provided no test failed (the kernel
# tests skip there with the missing feature, and the tests of what sockhop
# does on such a kernel pass); with a failure it is "failed".

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

# skip records a skipped test by its reason without the "file_test.go:NN: "
# it was logged at, so that tests skipped for one reason (every kernel test
# on a kernel that cannot run sockhop) are listed as one group.
function skip(pkg, name, reason,    key, i) {
	key = reason; sub(/^[A-Za-z0-9_]+\.go:[0-9]+: /, "", key)
	if ((pkg, key) in group) {
		i = group[pkg, key]
		gnames[pkg, i] = gnames[pkg, i] ", " name
		gcount[pkg, i]++
		return
	}
	i = ++ngroups[pkg]
	group[pkg, key] = i
	gkey[pkg, i] = key; gfull[pkg, i] = reason; gnames[pkg, i] = name; gcount[pkg, i] = 1
}

function print_skips(pkg,    i, n, names, line, k, w) {
	for (i = 1; i <= ngroups[pkg]; i++) {
		if (gcount[pkg, i] == 1) {
			printf "    SKIP %s: %s\n", gnames[pkg, i], gfull[pkg, i]
			continue
		}
		printf "    SKIP %d tests: %s\n", gcount[pkg, i], gkey[pkg, i]
		n = split(gnames[pkg, i], names, ", ")
		line = "      "
		for (k = 1; k <= n; k++) {
			w = names[k] (k < n ? "," : "")
			if (length(line) + length(w) > 100 && line != "      ") { print line; line = "      " }
			line = line (line == "      " ? "" : " ") w
		}
		print line
	}
}

BEGIN { sec = ""; done = 0; doctor_rc = -1; ntests = 0 }

{ sub(/\r$/, "") }

/^@@@ kernel / { kernel = $3; next }
/^@@@ doctor$/ { sec = "doctor"; next }
/^@@@ exit doctor / { doctor_rc = $4 + 0; sec = ""; next }
/^@@@ test / {
	sec = "test"; pkg = $3; cur = ""
	order[++ntests] = pkg
	npass[pkg] = nfail[pkg] = nskip[pkg] = 0
	next
}
/^@@@ exit test / {
	rc[$4] = $5 + 0; dur[$4] = $6; sec = ""; next
}
/^@@@ done$/ { done = 1; sec = ""; next }
/^@@@ / { sec = $2; next }

sec == "modules" { modules = modules "\n    " $0; next }
sec == "leftovers" { if (trim($0) != "") leftovers = leftovers " " trim($0); next }

sec == "doctor" {
	# "fail  check  detail", then an indented "hint: ..." that may wrap.
	if ($1 == "fail") {
		line = $0; sub(/^fail +/, "", line); sub(/  +/, ": ", line)
		doctor_fail = doctor_fail (doctor_fail == "" ? "" : "; ") trim(line)
		in_hint = 1
	} else if (in_hint && $0 ~ /^ /) {
		h = trim($0); sub(/^hint: */, "", h)
		doctor_fail = doctor_fail ($1 ~ /^hint:/ ? " — " : " ") h
	} else {
		in_hint = 0
	}
	next
}

sec == "test" {
	if (match($0, /^ *=== (RUN|CONT|NAME|PAUSE) +/)) {
		cur = trim(substr($0, RLENGTH + 1))
		next
	}
	if (match($0, /^ *--- (PASS|FAIL|SKIP): /)) {
		lead = $0; sub(/[^ ].*/, "", lead)
		res = $0; sub(/^ *--- /, "", res); sub(/:.*/, "", res)
		name = substr($0, RLENGTH + 1); sub(/ \([0-9.]+s\)$/, "", name)
		top = (length(lead) == 0)
		if (res == "PASS") { if (top) { npass[pkg]++; passed_tests = passed_tests "@@ pass " pkg " " name "\n" } }
		else if (res == "FAIL") {
			if (top) nfail[pkg]++
			fails[pkg] = fails[pkg] "\n    FAIL " name (name in lastlog ? ": " lastlog[name] : "")
		} else {
			if (top) nskip[pkg]++
			skip(pkg, name, name in lastlog ? lastlog[name] : "(no reason given)")
		}
		next
	}
	if ($0 ~ /^panic: / || $0 ~ /^FAIL$/ || $0 ~ /test timed out/) {
		if (!(pkg in crash)) crash[pkg] = trim($0)
	}
	# A test's log line: "    file_test.go:NN: message". The last one before
	# its --- SKIP line is t.Skip's reason.
	if (cur != "" && match($0, /^ +[A-Za-z0-9_]+\.go:[0-9]+: /)) lastlog[cur] = trim($0)
	next
}

END {
	verdict = "ok"
	P = F = S = 0
	printf "  doctor: %s\n", doctor_rc == 0 ? "ok (sockhop can accelerate)" : doctor_rc < 0 ? "did not run" : "FAIL: " doctor_fail
	if (doctor_rc > 0) verdict = "unsupported"
	if (modules != "") printf "  modules that did not load:%s\n", modules
	for (i = 1; i <= ntests; i++) {
		p = order[i]
		extra = ""
		if (!(p in rc)) { extra = " — did not finish"; nfail[p]++ }
		else if (rc[p] != 0 && nfail[p] == 0) {
			extra = " — exited " rc[p] " without a failed test" (p in crash ? " (" crash[p] ")" : "")
			nfail[p]++
		}
		printf "  %-14s passed %3d  failed %3d  skipped %3d  (%s)%s\n", p, npass[p], nfail[p], nskip[p],
			(p in dur ? dur[p] : "?"), extra
		if (fails[p] != "") print substr(fails[p], 2)
		print_skips(p)
		P += npass[p]; F += nfail[p]; S += nskip[p]
	}
	if (leftovers != "") {
		printf "  FAIL: left behind in the guest:%s\n", leftovers
		F++
	}
	if (!done) {
		verdict = "incomplete"
		if (F == 0) F = 1
		print "  the guest did not finish (timeout, panic or crash: see the console log)"
	}
	else if (F > 0) verdict = "failed"
	if (doctor_rc > 0) printf "@@ reason %s\n", doctor_fail
	printf "%s", passed_tests
	printf "@@ verdict=%s passed=%d failed=%d skipped=%d\n", verdict, P, F, S
}
