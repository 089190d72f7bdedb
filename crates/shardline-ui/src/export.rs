//! The same pages as static HTML files (a CI artifact, an email): the executions list, every
//! execution, its data and training curves, its comparison with the execution before it, the
//! first page of every step's logs, the models, every artifact's lineage (at the served default
//! depth, 2), and the assets, linked to each other by relative paths. Live updates, filters, log
//! paging and other lineage depths need the server and are left out (their links are text).

use std::path::Path;

use maud::Markup;

use crate::http::{
    ASSETS, render_compare, render_data, render_execution, render_index, render_lineage,
    render_logs, render_model, render_training,
};
use crate::pages::{self, Ctx, Route};
use crate::{Error, Options, Source};

fn write(dir: &Path, relative: &str, text: &str) -> Result<(), Error> {
    let path = dir.join(relative);
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, text).map_err(io)
}

/// The static file of `route` and the context its links are written in (as deep as the file).
fn place(route: Route<'_>) -> (String, Ctx) {
    let relative = pages::exported(route).unwrap_or_else(|| "index.html".into());
    let depth = relative.matches('/').count();
    (
        relative,
        Ctx {
            export: Some(depth),
        },
    )
}

async fn page<'a, F>(dir: &Path, route: Route<'a>, render: F) -> Result<(), Error>
where
    F: AsyncFnOnce(&Ctx) -> Result<Markup, Error>,
{
    let (relative, ctx) = place(route);
    let markup = render(&ctx).await?;
    write(dir, &relative, &markup.into_string())
}

/// Writes the dashboard's pages over `options.state`'s store into `dir`; returns how many
/// files it wrote.
pub async fn export(options: &Options, dir: &Path) -> Result<usize, Error> {
    let source = Source::open(&options.state, options.registries.clone())?;
    let mut files = 0;
    for (name, _, text) in ASSETS {
        write(
            dir,
            &pages::exported(Route::Asset(name)).unwrap_or_default(),
            text,
        )?;
        files += 1;
    }
    let all = Route::Executions {
        pipeline: None,
        status: None,
    };
    page(dir, all, async |ctx| render_index(&source, ctx, None, None)).await?;
    files += 1;
    let executions = source.executions(None, None)?;
    // Every artifact a page may link to a lineage page of: what the steps read and wrote, and
    // where registered models came from.
    let mut artifacts = std::collections::BTreeSet::new();
    for e in &executions {
        let id = e.id.as_str();
        // The comparison the list and the execution's page link to: with the one before it.
        if let Some(before) = executions
            .iter()
            .filter(|o| o.pipeline == e.pipeline && o.started < e.started)
            .max_by(|a, b| a.started.total_cmp(&b.started))
        {
            let before = before.id.as_str();
            page(dir, Route::Compare(before, id), async |ctx| {
                render_compare(&source, ctx, before, id)
            })
            .await?;
            files += 1;
        }
        for s in source.db().steps(id)? {
            for edge in source.db().edges_of_step(id, &s.step)? {
                artifacts.insert(edge.uri);
            }
            if let Some(outputs) = s.outputs.as_ref().and_then(|o| o.as_object()) {
                artifacts.extend(
                    outputs
                        .values()
                        .filter_map(|v| v.as_str())
                        .map(String::from),
                );
            }
        }
    }
    for e in executions {
        let id = e.id.as_str();
        page(dir, Route::Execution(id), async |ctx| {
            render_execution(&source, ctx, id)
        })
        .await?;
        files += 1;
        let steps = source.db().steps(id)?;
        if steps
            .iter()
            .any(|s| s.kind == "manifest" || s.kind == "process")
        {
            page(dir, Route::Data(id), async |ctx| {
                render_data(&source, ctx, id).await
            })
            .await?;
            files += 1;
        }
        if steps.iter().any(|s| s.kind == "train") {
            page(dir, Route::Training(id, None), async |ctx| {
                render_training(&source, ctx, id, None).await
            })
            .await?;
            files += 1;
        }
        for s in steps {
            let step = s.step.as_str();
            if source.db().logs(id, step)?.is_empty() {
                continue;
            }
            let route = Route::Logs {
                execution: id,
                step,
                attempt: None,
                page: 0,
                view: "interleaved",
            };
            page(dir, route, async |ctx| {
                render_logs(&source, ctx, id, step, None, 0, "interleaved")
            })
            .await?;
            files += 1;
        }
    }
    let registries = source.models().await?;
    page(dir, Route::Models, async |ctx| {
        Ok(pages::models(ctx, &registries))
    })
    .await?;
    files += 1;
    for registry in &registries {
        let i = registry.index;
        for r in registry.records.iter().flatten() {
            artifacts.insert(r.source.clone());
            page(dir, Route::Model(i, &r.name, r.version), async |ctx| {
                render_model(&source, ctx, i, &r.name, r.version).await
            })
            .await?;
            files += 1;
        }
    }
    for artifact in &artifacts {
        let route = Route::Lineage(artifact, 2);
        page(dir, route, async |ctx| {
            match render_lineage(&source, ctx, artifact, 2) {
                Err(Error::NotFound(_)) => Ok(pages::layout(
                    ctx,
                    "Lineage",
                    None,
                    maud::html! {
                        h1 { "Lineage" }
                        p { "No step run in this store read or wrote " code { (artifact) } "." }
                    },
                )),
                other => other,
            }
        })
        .await?;
        files += 1;
    }
    Ok(files)
}
