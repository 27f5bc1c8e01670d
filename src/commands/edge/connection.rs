//! A kept environment's connection printed as `rehearse env` prints it (shell words,
//! dotenv or JSON), for a run (`env`) and a stage (`stage env`).

use crate::cli::{Format, Global};
use crate::description::template::Outputs;
use crate::engine::connection::Connection;
use crate::exit;

/// Prints connection details as `env` does (shell, dotenv or JSON).
pub(crate) fn print_connection(g: &Global, c: &Connection) -> i32 {
    print_connection_with(g, c, &[])
}

/// [`print_connection`], with `extra` variables after the connection's (shell and
/// dotenv; JSON is the connection alone).
pub(crate) fn print_connection_with(g: &Global, c: &Connection, extra: &[(&str, &str)]) -> i32 {
    if g.format == Format::Json {
        return crate::commands::print_json(c).map_or_else(|code| code, |()| exit::PASSED);
    }
    let outputs = Outputs {
        run_id: c.run_id.clone(),
        databases: c.databases.clone(),
        services: c.services.clone(),
        ..Outputs::default()
    };
    // Not REHEARSE_RUN_ID: it tags the run's own processes, which teardown stops; a
    // shell that evaluated this output is not one of them.
    let mut vars: Vec<(String, String)> = crate::suites::standard_env(&c.run_id, "", &outputs)
        .into_iter()
        .filter(|(k, _)| k != "REHEARSE_RELEASE" && k != "REHEARSE_RUN_ID")
        .collect();
    if let [(_, db)] = c.databases.iter().collect::<Vec<_>>().as_slice() {
        vars.push(("DATABASE_URL".into(), db.url.clone()));
        vars.extend(db.libpq_env());
    }
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    // Each variable once (the standard set may carry libpq's already), first place kept.
    let mut seen = std::collections::BTreeSet::new();
    vars.retain(|(k, _)| seen.insert(k.clone()));
    // These lines are for `eval` and `.env` files, so they are printed exactly: a
    // value a terminal would act on (from a forged connection file in a shared store)
    // is refused rather than changed.
    if let Some((k, _)) = vars
        .iter()
        .find(|(k, v)| k.chars().chain(v.chars()).any(|c| c.is_control() || crate::sys::text::is_bidi_control(c)))
    {
        errln!(
            "error: the connection details of {} hold a control character in {k}: refused (no connection \
             rehearse writes has one)",
            c.run_id
        );
        return exit::USAGE;
    }
    let export = if g.format == Format::Dotenv { "" } else { "export " };
    let mut out = String::new();
    for (k, v) in vars {
        // The output is evaluated (`eval "$(rehearse env RUN)"`): a name is a name, a
        // value one quoted word on its line; anything else is refused, not printed.
        if let Err(e) = crate::description::decode::KeyRule::EnvVar.check(&k) {
            errln!("error: run {}: `{}` is not a variable name ({e}); nothing printed", c.run_id, k.escape_debug());
            return exit::USAGE;
        }
        if v.chars().any(char::is_control) || (g.format == Format::Dotenv && v.contains('\'')) {
            errln!("error: run {}: the value of {k} cannot be written as one quoted value; nothing printed", c.run_id);
            return exit::USAGE;
        }
        out.push_str(&format!("{export}{k}={}\n", crate::sys::text::shell_quote(&v)));
    }
    print!("{out}"); // raw: exact shell words (checked above)
    exit::PASSED
}
