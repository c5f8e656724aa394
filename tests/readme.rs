//! The README's examples run as written: every command line of its ```sh blocks, in README
//! order, through the built `soma` binary, in one fresh temporary directory. The quick
//! start's `cargo run --release --` is `soma`; its `cargo test --release` is the one line not
//! run, since the test suite cannot run itself from inside one of its tests.
//!
//! The lines run in `T/soma`, a directory beside `T/shared`, a link to the `../shared` beside
//! this crate, so that `../shared/data/mnist` reads what it reads from the repository's root.
//! The files the lines name as the user's own (`my.csv`, `run.toml`, `model.safetensors`,
//! `rows.csv`) are written beforehand; every other path a line names must come from an
//! earlier line (`runs/digits` and so on). The test fails when the example blocks are gone,
//! when a line is not a `soma` command, when a fixture is no longer named by any line, or when
//! a line's subcommand has no check here: README and test cannot drift apart quietly.
//!
//! Each line must exit 0 and pass a cheap check of what it made: a train line its run
//! directory (complete, or `.partial` after `--stop-after`), eval an accuracy, predict a CSV
//! with a row per input row, export its file, check its PASS, devices every adapter. The
//! figures quoted in the README's comments are documentation and are not asserted.
//!
//! GPU policy as in tests/cli.rs: with no adapter listed by `soma devices --json`, the lines
//! that need one (`soma check`, `soma devices`, `--device gpu`) print SKIPPED, and the lines
//! on the default `--device auto` run on the CPU path as auto does; with `SOMA_REQUIRE_GPU=1`
//! a missing adapter fails the test. A line that reads `../shared/data` which is not there
//! prints SKIPPED, or fails with `SOMA_REQUIRE_DATA=1`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use common::bin::{adapters, read, soma_in, Ran, TempDir};

// ---------------------------------------------------------------------------------------
// Helpers (the patterns of tests/cli.rs)
// ---------------------------------------------------------------------------------------

/// Written past the test harness's capture, so that a skip is seen even when the test passes.
fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

fn env_is_1(name: &str) -> bool {
    std::env::var(name).as_deref() == Ok("1")
}

/// The entries of a directory, by name (none when it is not there).
fn entries(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn readme() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
}

// ---------------------------------------------------------------------------------------
// The README's command lines
// ---------------------------------------------------------------------------------------

/// One fenced code block: its info string, the paragraph just above it, and its lines with
/// their line numbers in README.md.
struct Block {
    info: String,
    above: String,
    lines: Vec<(usize, String)>,
}

fn code_blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    // The paragraph being read, and the last one before it (a blank line may come between a
    // paragraph and its block).
    let mut paragraph: Vec<&str> = Vec::new();
    let mut last = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match open.take() {
            Some(block) if fence => blocks.push(block),
            Some(mut block) => {
                block.lines.push((i + 1, line.to_string()));
                open = Some(block);
            }
            None if fence => {
                if !paragraph.is_empty() {
                    last = paragraph.join(" ");
                }
                open = Some(Block {
                    info: line.trim_start().trim_start_matches('`').trim().to_string(),
                    above: std::mem::take(&mut last),
                    lines: Vec::new(),
                });
                paragraph.clear();
            }
            None if line.trim().is_empty() => {
                if !paragraph.is_empty() {
                    last = paragraph.join(" ");
                }
                paragraph.clear();
            }
            None => paragraph.push(line),
        }
    }
    match open {
        Some(_) => Err("README.md: a code block is never closed".into()),
        None => Ok(blocks),
    }
}

/// Splits a command line into words as a POSIX shell does, for what the README uses: blanks
/// separate words, single quotes keep everything, double quotes keep all but `\"` and `\\`,
/// a backslash outside quotes escapes the next character, and a `#` that starts a word starts
/// a comment to the end of the line. An unclosed quote or a trailing backslash is an error.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in `{line}`")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("unclosed \" in `{line}`")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in `{line}`")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a trailing backslash in `{line}`")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// One README line to run: where it is, as written, and the arguments of `soma`.
struct Line {
    at: usize,
    text: String,
    args: Vec<String>,
}

/// The `soma` command lines of every ```sh block of README.md, in order. The blocks must be
/// there: the quick start first (`cargo run --release -- train`), and the examples after the
/// paragraph that points at `soma train --help`. A line continued with a trailing backslash
/// is joined to the next; blank and comment-only lines are passed over.
fn readme_lines(text: &str) -> Result<Vec<Line>, String> {
    let blocks: Vec<Block> = code_blocks(text)?
        .into_iter()
        .filter(|b| b.info == "sh")
        .collect();
    let quick = blocks
        .first()
        .ok_or("README.md has no ```sh block: where did the quick start go?")?;
    if !quick.lines.iter().any(|(_, l)| {
        shell_words(l).is_ok_and(|w| w == ["cargo", "run", "--release", "--", "train"])
    }) {
        return Err(
            "README.md: the first ```sh block is not the quick start (`cargo run --release -- train`)"
                .into(),
        );
    }
    if !blocks
        .iter()
        .any(|b| b.above.contains("soma train --help") && !b.lines.is_empty())
    {
        return Err(
            "README.md: no ```sh block of examples after the paragraph naming `soma train --help`"
                .into(),
        );
    }

    let mut lines = Vec::new();
    for block in &blocks {
        let mut pending: Option<(usize, String)> = None;
        for (at, raw) in &block.lines {
            let (at, joined) = match pending.take() {
                Some((first, head)) => (first, format!("{head} {raw}")),
                None => (*at, raw.clone()),
            };
            if let Some(head) = joined.trim_end().strip_suffix('\\') {
                pending = Some((at, head.to_string()));
                continue;
            }
            let words = shell_words(&joined).map_err(|e| format!("README.md:{at}: {e}"))?;
            let args: Vec<String> = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                [] => continue,
                ["soma", ..] => words[1..].to_vec(),
                // The quick start's spelling of `soma` (README: "`soma` is `cargo run
                // --release --`").
                ["cargo", "run", "--release", "--", ..] => words[4..].to_vec(),
                // The test suite cannot run itself from inside one of its tests: this is the
                // one line of the README that is not run here.
                ["cargo", "test", "--release"] => continue,
                _ => {
                    return Err(format!(
                        "README.md:{at}: `{}` is not a soma command; run it in tests/readme.rs \
                         or take it out of the ```sh blocks",
                        joined.trim()
                    ))
                }
            };
            lines.push(Line {
                at,
                text: joined.trim().to_string(),
                args,
            });
        }
        if pending.is_some() {
            return Err("README.md: a ```sh block ends in a backslash".into());
        }
    }
    Ok(lines)
}

/// The value of `--flag VALUE` or `--flag=VALUE`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

fn has(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

// ---------------------------------------------------------------------------------------
// Fixtures: the files the README's lines name as the user's own
// ---------------------------------------------------------------------------------------

/// Writes the fixtures into `cwd` and returns their names.
fn write_fixtures(cwd: &Path) -> Vec<&'static str> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");

    // my.csv: iris with its classes by name in a `species` column.
    let iris = read(&data.join("iris.csv"));
    let mut my = String::new();
    for (i, line) in iris.lines().enumerate() {
        let (features, label) = line
            .rsplit_once(',')
            .expect("iris.csv: a line without a comma");
        let label = match (i, label) {
            (0, _) => "species",
            (_, "0") => "setosa",
            (_, "1") => "versicolor",
            (_, "2") => "virginica",
            _ => panic!("iris.csv line {}: label {label}", i + 1),
        };
        my += &format!("{features},{label}\n");
    }
    std::fs::write(cwd.join("my.csv"), my).unwrap();

    // run.toml: settings the line's flags partly override (its epochs, not its optimizer).
    std::fs::write(
        cwd.join("run.toml"),
        "# soma train --config run.toml: keys as the flags, with _ for -\n\
         layers = \"4,16,3\"\noptimizer = \"momentum\"\nlr = 0.05\nepochs = 5\n",
    )
    .unwrap();

    // rows.csv: a few rows of digits to predict, headed by the model's feature names, without
    // the label column.
    let digits = read(&data.join("digits.csv"));
    let rows: String = digits
        .lines()
        .take(6)
        .map(|l| {
            l.rsplit_once(',')
                .expect("digits.csv: no comma")
                .0
                .to_string()
                + "\n"
        })
        .collect();
    assert!(rows.starts_with("pixel_0_0,"), "digits.csv: header {rows}");
    std::fs::write(cwd.join("rows.csv"), rows).unwrap();

    // model.safetensors: a plain PyTorch state dict of a 64-64-10 nn.Sequential (keys 0.* and
    // 2.*, no soma metadata), with nn.Linear's default initialisation.
    std::fs::write(cwd.join("model.safetensors"), state_dict(&INIT_WIDTHS)).unwrap();

    vec!["my.csv", "run.toml", "rows.csv", "model.safetensors"]
}

/// The widths of the network in model.safetensors.
const INIT_WIDTHS: [usize; 3] = [64, 64, 10];

/// A safetensors file of an `nn.Sequential` of `nn.Linear` layers (with activations between
/// them, so the keys are 0.*, 2.*, ...), weights and biases uniform in ±1/sqrt(fan_in).
fn state_dict(widths: &[usize]) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut rng = common::TestRng::new(7);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, w) in widths.windows(2).enumerate() {
        let (fan_in, fan_out) = (w[0], w[1]);
        let bound = 1.0 / (fan_in as f32).sqrt();
        for (part, shape) in [("weight", vec![fan_out, fan_in]), ("bias", vec![fan_out])] {
            let n = shape.iter().product();
            let bytes = rng
                .vec(n, -bound, bound)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            tensors.push((format!("{}.{part}", 2 * i), shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

// ---------------------------------------------------------------------------------------
// Checks per subcommand
// ---------------------------------------------------------------------------------------

/// Whether the line needs a GPU adapter: `soma check` (GPU against CPU), `soma devices`
/// without `--json` (an error when it lists none) and `--device gpu`. The default
/// `--device auto` runs on the CPU path when there is none.
fn needs_gpu(args: &[String]) -> bool {
    match args.first().map(String::as_str) {
        Some("check") => true,
        Some("devices") => !has(args, "--json"),
        _ => flag(args, "--device") == Some("gpu"),
    }
}

/// The paths under `../shared/` that the line reads (`mnist:DIR`, `csv:FILE`, ...).
fn shared_paths(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| {
            let value = a.split_once(':').map_or(a.as_str(), |(_, v)| v);
            value.split(',').map(str::to_string).collect::<Vec<_>>()
        })
        .filter(|p| p.starts_with("../shared/"))
        .collect()
}

/// Whether `name` is a run's default name: `YYYYmmdd-HHMMSS`, perhaps with `-N` after it.
fn is_timestamp(name: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = name.split('-').collect();
    match parts[..] {
        [date, time] => digits(date, 8) && digits(time, 6),
        [date, time, n] => {
            digits(date, 8) && digits(time, 6) && !n.is_empty() && digits(n, n.len())
        }
        _ => false,
    }
}

/// Checks a `soma train` line's run directory. `before`: the entries of `runs/` before it.
fn check_train(cwd: &Path, args: &[String], ran: &Ran, before: &BTreeSet<String>) {
    let dir: String = if let Some(r) = flag(args, "--resume") {
        r.strip_suffix(".partial").unwrap_or(r).to_string()
    } else if let Some(out) = flag(args, "--out") {
        out.to_string()
    } else {
        let made: Vec<String> = entries(&cwd.join("runs"))
            .difference(before)
            .cloned()
            .collect();
        let [name] = &made[..] else {
            ran.fail(&format!("made {made:?} in runs/, not one run directory"))
        };
        // runs/<UTC timestamp>, as the README says (-2, -3, ... when the name is taken).
        let name = name.trim_end_matches(".partial");
        if !is_timestamp(name) {
            ran.fail(&format!("made runs/{name}, not runs/<timestamp>"));
        }
        format!("runs/{name}")
    };
    let run = cwd.join(&dir);
    let partial = cwd.join(format!("{dir}.partial"));
    if has(args, "--stop-after") {
        assert!(
            partial.join("checkpoint.safetensors").is_file() && !run.exists(),
            "soma {}: no {dir}.partial with a checkpoint (or {dir} too)",
            ran.args
        );
        if !ran
            .stderr
            .contains(&format!("soma train --resume {dir}.partial"))
        {
            ran.fail(&format!("does not print how to continue {dir}.partial"));
        }
        return;
    }
    let files: BTreeSet<String> = entries(&run);
    let mut want: BTreeSet<String> = [
        "checkpoint.safetensors",
        "config.json",
        "curves.svg",
        "metrics.jsonl",
    ]
    .map(String::from)
    .into();
    // A shadow-checked run also logs its replayed steps, each within the tolerance.
    if let Some(every) = flag(args, "--shadow-check") {
        want.insert("shadow.jsonl".into());
        let log = read(&run.join("shadow.jsonl"));
        let every: usize = every.parse().unwrap();
        assert!(
            log.lines().count() >= 1 && every > 0,
            "soma {}: {log}",
            ran.args
        );
        for line in log.lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            let tolerance = r["tolerance"].as_f64().unwrap();
            for t in r["tensors"].as_array().unwrap() {
                assert!(
                    t["rel_l2"].as_f64().unwrap() <= tolerance,
                    "soma {}: {t}",
                    ran.args
                );
            }
        }
        if !ran.stdout.contains("shadow: ") {
            ran.fail("prints no shadow line");
        }
    }
    assert_eq!(files, want, "soma {}: the files of {dir}", ran.args);
    assert!(!partial.exists(), "soma {}: {dir}.partial left", ran.args);
    if !ran.stdout.contains(&format!("run directory: {dir} ")) {
        ran.fail(&format!("does not name its run directory {dir}"));
    }
    let config: Value = serde_json::from_str(&read(&run.join("config.json"))).unwrap();
    if let Some(epochs) = flag(args, "--epochs") {
        let lines = read(&run.join("metrics.jsonl")).lines().count();
        assert_eq!(
            lines.to_string(),
            epochs,
            "soma {}: epochs in {dir}/metrics.jsonl",
            ran.args
        );
        assert_eq!(config["options"]["epochs"].to_string(), epochs);
    }
    // Where it trained: the CPU path when asked, else (auto) an adapter when there is one.
    let device = config["device"].as_str().unwrap_or_default();
    match flag(args, "--device") {
        Some("cpu") => assert_eq!(device, "cpu", "soma {}", ran.args),
        _ if !adapters().is_empty() => assert!(
            adapters().iter().any(|a| a == device),
            "soma {}: trained on '{device}', not on one of the adapters {:?}",
            ran.args,
            adapters()
        ),
        _ => {}
    }
    // What the fixtures set.
    if flag(args, "--data") == Some("csv:my.csv") {
        assert_eq!(config["classes"], 3, "my.csv's three species: {config}");
    }
    if flag(args, "--config") == Some("run.toml") {
        let o = &config["options"];
        assert_eq!(o["optimizer"], "momentum", "run.toml's optimizer: {o}");
        assert_eq!(o["layers"], serde_json::json!([4, 16, 3]), "{o}");
    }
    if flag(args, "--init") == Some("model.safetensors") && flag(args, "--layers").is_none() {
        let widths: Vec<u64> = config["network"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| {
                [
                    l["inputs"].as_u64().unwrap(),
                    l["outputs"].as_u64().unwrap(),
                ]
            })
            .collect();
        let want: Vec<u64> = INIT_WIDTHS
            .windows(2)
            .flat_map(|w| [w[0] as u64, w[1] as u64])
            .collect();
        assert_eq!(
            widths, want,
            "soma {}: not model.safetensors' network",
            ran.args
        );
    }
}

/// Runs one README line in `cwd` and checks what it did.
fn run_line(cwd: &Path, line: &Line) {
    let args = &line.args;
    let before = entries(&cwd.join("runs"));
    let ran = soma_in(cwd, args).ok();
    match args.first().map(String::as_str) {
        Some("train") => check_train(cwd, args, &ran, &before),
        Some("eval") => {
            if !ran
                .stdout
                .lines()
                .any(|l| (l.starts_with("accuracy ") && l.ends_with('%')) || l.starts_with("RMSE "))
            {
                ran.fail("prints no accuracy (nor RMSE)");
            }
            let scope = match has(args, "--all-rows") {
                true => "(all rows)",
                false => "(test split)",
            };
            if !ran.stdout.lines().next().unwrap_or("").contains(scope) {
                ran.fail(&format!("does not say it scored {scope}"));
            }
        }
        Some("predict") => {
            let input = flag(args, "--input").expect("predict without --input");
            let rows = read(&cwd.join(input)).lines().count() - 1;
            let out: Vec<&str> = ran.stdout.lines().collect();
            if !out.first().is_some_and(|h| h.starts_with("class,")) || out.len() != rows + 1 {
                ran.fail(&format!(
                    "not a CSV header and {rows} rows, one per row of {input}"
                ));
            }
        }
        Some("export") => {
            let output = flag(args, "--output").expect("export without --output");
            let len = std::fs::metadata(cwd.join(output)).map_or(0, |m| m.len());
            if len == 0 {
                ran.fail(&format!("wrote no {output}"));
            }
        }
        Some("check") => {
            if !ran.stdout.contains("PASS") {
                ran.fail("does not PASS");
            }
        }
        Some("devices") => {
            for a in adapters() {
                if !ran.stdout.contains(a.as_str()) {
                    ran.fail(&format!("does not list {a}"));
                }
            }
        }
        _ => panic!(
            "README.md:{}: `{}`: tests/readme.rs has no check for this subcommand; add one",
            line.at, line.text
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn shell_words_splits_like_a_shell() {
    let w = |s: &str| shell_words(s).unwrap();
    assert_eq!(
        w("soma train   --epochs 3  "),
        ["soma", "train", "--epochs", "3"]
    );
    assert_eq!(
        w("soma eval --model runs/x   # a comment"),
        ["soma", "eval", "--model", "runs/x"]
    );
    assert_eq!(
        w("soma train --data csv:a#b.csv#c"),
        ["soma", "train", "--data", "csv:a#b.csv#c"]
    );
    assert_eq!(
        w("soma predict --input 'my rows.csv'"),
        ["soma", "predict", "--input", "my rows.csv"]
    );
    assert_eq!(
        w(r#"soma x "a \"b\" # c" d\ e '#'"#),
        ["soma", "x", r#"a "b" # c"#, "d e", "#"]
    );
    assert_eq!(w("a''b \"\""), ["ab", ""]);
    assert!(w("   # only a comment").is_empty());
    for bad in ["soma 'open", "soma \"open", "soma open\\"] {
        assert!(shell_words(bad).is_err(), "{bad}");
    }
}

#[test]
fn readme_lines_are_found_and_refused_when_not_soma() {
    let readme = "intro\n\n```sh\ncargo run --release -- train   # quick\ncargo test --release\n```\n\n\
                  More: `soma train --help`. Examples:\n\n```sh\nsoma eval \\\n  --model runs/x\n\n# note\nsoma devices\n```\n";
    let lines = readme_lines(readme).unwrap();
    let got: Vec<(usize, Vec<String>)> = lines.into_iter().map(|l| (l.at, l.args)).collect();
    let want: Vec<(usize, Vec<String>)> = vec![
        (4, vec!["train".into()]),
        (11, vec!["eval".into(), "--model".into(), "runs/x".into()]),
        (15, vec!["devices".into()]),
    ];
    assert_eq!(got, want);
    for bad in [
        readme.replace("soma devices", "ls runs"),
        readme.replace("More: `soma train --help`", "More:"),
        readme.replace(
            "cargo run --release -- train",
            "cargo run --release -- eval",
        ),
        readme.replace("```sh", "```"),
        readme.trim_end().trim_end_matches('`').to_string(),
    ] {
        assert!(readme_lines(&bad).is_err(), "{bad}");
    }
}

#[test]
fn lines_are_told_apart() {
    let args = |s: &str| shell_words(s).unwrap();
    assert!(needs_gpu(&args("check --steps 20")));
    assert!(needs_gpu(&args("devices")));
    assert!(!needs_gpu(&args("devices --json")));
    assert!(needs_gpu(&args("train --device gpu")));
    assert!(needs_gpu(&args("train --device=gpu")));
    assert!(!needs_gpu(&args("train --epochs 3")));
    assert!(!needs_gpu(&args("train --device cpu")));
    assert_eq!(
        shared_paths(&args(
            "train --data mnist:../shared/data/mnist --out ../shared/x"
        )),
        ["../shared/data/mnist", "../shared/x"]
    );
    assert_eq!(
        shared_paths(&args("train --data idx:../shared/a,../shared/b")),
        ["../shared/a", "../shared/b"]
    );
    assert!(shared_paths(&args("train --data csv:my.csv")).is_empty());
    assert!(is_timestamp("20261125-210000") && is_timestamp("20261125-210000-2"));
    for bad in [
        "digits",
        "20261125",
        "20261125-2100",
        "20261125-210000-",
        "2026112a-210000",
    ] {
        assert!(!is_timestamp(bad), "{bad}");
    }
}

/// Every command line of the README's ```sh blocks runs as written, in order, in one fresh
/// directory, and does what the README says.
#[test]
fn readme_examples_run_as_written() {
    let lines = readme_lines(&readme()).unwrap_or_else(|e| panic!("{e}"));
    let have_gpu = !adapters().is_empty();
    if !have_gpu && env_is_1("SOMA_REQUIRE_GPU") {
        panic!("SOMA_REQUIRE_GPU=1 but `soma devices --json` lists no adapter");
    }

    let dir = TempDir::new("examples");
    let cwd = dir.0.join("soma");
    std::fs::create_dir_all(&cwd).unwrap();
    // T/shared: the ../shared beside this crate, so that ../shared/data resolves from T/soma
    // as it does from the repository's root. When there is none, the link is not made and
    // the lines that read it are skipped (or fail, with SOMA_REQUIRE_DATA=1).
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    #[cfg(unix)]
    if let Ok(target) = shared.canonicalize() {
        std::os::unix::fs::symlink(target, dir.0.join("shared")).unwrap();
    }
    #[cfg(not(unix))]
    let _ = shared;
    let fixtures = write_fixtures(&cwd);
    for f in &fixtures {
        assert!(
            lines.iter().any(|l| l.args.iter().any(|a| a.contains(f))),
            "no README line uses the fixture {f} any more: take it out of tests/readme.rs"
        );
    }

    let start = Instant::now();
    for line in &lines {
        let at = format!("README.md:{}: `{}`", line.at, line.text);
        if needs_gpu(&line.args) && !have_gpu {
            skipped(&format!("{at}: `soma devices --json` lists no adapter"));
            continue;
        }
        if let Some(missing) = shared_paths(&line.args)
            .into_iter()
            .find(|p| !cwd.join(p).exists())
        {
            let why = format!("{at}: {missing} is not there (beside the crate)");
            if env_is_1("SOMA_REQUIRE_DATA") {
                panic!("{why} (SOMA_REQUIRE_DATA=1)");
            }
            skipped(&why);
            continue;
        }
        let t = Instant::now();
        run_line(&cwd, line);
        eprintln!("{at}: {:.1} s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "{} README lines in {:.1} s",
        lines.len(),
        start.elapsed().as_secs_f64()
    );
}
