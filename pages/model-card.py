"""Model card page: intended use, data, procedure, performance, limitations and versions of the selected model,
rendered from its manifest.json (and, where richer, its reports). No number on this page is typed into the text:
every figure is formatted from the bundle."""
import pandas as pd
import streamlit as st

from model.core.types import Task
from model.outputs import bundle_tables as tables
from model.outputs import formatting as F
from model.outputs.safe_text import md_escape
from pages.lib.common import bundle_report, current_bundle, threshold_for
from pages.lib.evidence_view import lead
from pages.lib.router import take_over
from pages.lib.sites_view import active_site, side_by_side
from pages.lib.ui import fmt_int, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

t = tr("model_card")


def initial_weights_text(record) -> str:
    """A member's starting weights, as the manifest records them: random with its seed, or a pretrained backbone
    with its source package, licence and checksum."""
    parts = tables.initial_weights_parts(record)
    if parts is None:
        return t("init_not_recorded")
    return t(f"init_{parts.pop('kind')}", **{k: md_escape(str(v)) for k, v in parts.items()})


def per_dataset(key: str, dataset: str, **kwargs) -> str:
    """The dataset-specific text `key_<dataset>`, else the generic `key_other`."""
    return t(f"{key}_{dataset}", default=t(f"{key}_other", **kwargs), **kwargs)


bundle = current_bundle()
if bundle is None:
    st.stop()
manifest = bundle.manifest
training = manifest.get("training") or {}
summary = manifest.get("evaluation") or {}
evaluation = bundle_report(bundle.name, "evaluation") or {}
eda = bundle_report(bundle.name, "eda") or {}
dataset = tables.dataset_key(manifest)
classes = bundle.classes
positive = classes[-1]

st.title(t("title", title=bundle.title))
st.caption(t("subtitle", version=manifest.get("version", bundle.version),
             created=F.fmt_datetime(training.get("created")),
             task=t.name("task", bundle.task.value), classes=", ".join(classes)))
if tables.is_small_training_set(manifest):
    explanation = t("research_only_text", n=fmt_int(training.get("counts", {}).get("train")),
                    limit=fmt_int(tables.SMALL_TRAINING_SET))
    st.error(f"### {t('research_only')}\n{explanation}",
             icon="⚠️")

# --- headline -------------------------------------------------------------------------------------------------------
site = active_site(bundle)
if bundle.task == Task.BINARY and "auc" in summary:
    lead(bundle, site, threshold_for(bundle, site))  # the most external evidence first, the training collection second
elif "macro_auc" in summary:
    cols = st.columns(3)
    cols[0].metric(t("m_macro_auc"), F.fmt_num(summary.get("macro_auc")))
    if "accuracy" in summary:
        cols[1].metric(t("m_accuracy"), F.fmt_pct(summary.get("accuracy")))
    cols[2].metric(t("m_n"), fmt_int(summary.get("n")))

# --- intended use ---------------------------------------------------------------------------------------------------
st.header(t("h_intended_use"))
st.markdown(t("intended_what", positive=positive, classes=", ".join(classes)))
st.markdown(t("intended_who"))
st.markdown(per_dataset("population", dataset, data=training.get("data", "?")))
if manifest.get("population") and manifest["population"] != "unspecified":
    st.caption(t("population_recorded", population=manifest["population"]))
st.markdown(t("intended_not"))

# --- data -----------------------------------------------------------------------------------------------------------
st.header(t("h_data"))
st.markdown(per_dataset("provenance", dataset, data=training.get("data", "?")))
source = tables.source_summary(eda) if eda else None
if source and source["low_resolution"]:
    st.markdown(t("source_kinds", original=fmt_int(source["original"]), total=fmt_int(source["total"]),
                  long_side=source["original_long_side"], low=fmt_int(source["low_resolution"]),
                  side=source["low_resolution_side"]))
if eda:
    st.markdown(t("data_counts", images=fmt_int(eda.get("n_images")), patients=fmt_int(eda.get("n_patients")),
                  dupes=fmt_int(eda.get("duplicates_removed_if_deduplicated"))))

st.subheader(t("h_split"))
st.markdown(t("split_procedure", procedure=training.get("split", "—"), seed=training.get("split_seed", "—")))
splits = tables.split_table(manifest)
if len(splits):
    splits["split"] = splits["split"].map(lambda s: t.name("split", s))
    st.table(splits.rename(columns={"split": t("col_split"), "images": t("col_images"),
                                        "patients": t("col_patients")}),
                 hide_index=True, width="content")
spec = bundle.input_spec
st.markdown(t("training_setup", w=spec.get("width"), h=spec.get("height"), resize=spec.get("resize", "—"),
              epochs=training.get("epochs_max", "—"), batch=training.get("batch_size", "—"),
              lr=training.get("lr", "—"), minutes=F.fmt_num(training.get("minutes_per_member"), 0),
              members=len(manifest.get("members", []))))

# --- performance ----------------------------------------------------------------------------------------------------
st.header(t("h_performance"))
if bundle.task == Task.BINARY and "auc" in summary:
    rows = [(t("auc"), f"{F.fmt_num(summary.get('auc'))} ({t('ci')} {F.fmt_ci(summary.get('auc_ci95'))})")]
    rows += [(t(k), F.fmt_pct(summary.get(k))) for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")]
    rows += [(t("f1"), F.fmt_num(summary.get("f1")))]
    st.table(pd.DataFrame(rows, columns=[t("col_metric"), t("col_value")]), hide_index=True, width="content")
    st.caption(t("performance_caption", n=fmt_int(summary.get("n")), split=t.name("split", summary.get("split")),
                 point=t.name("op", summary.get("at"))))
    member_auc = summary.get("member_auc") or {}
    if member_auc:
        members = evaluation.get("members", {})
        st.table(pd.DataFrame([{t("col_model"): m, t("col_auc"): F.fmt_num(a),
                                    t("col_ci"): F.fmt_ci(members.get(m, {}).get("auc_ci95"))}
                                   for m, a in member_auc.items()]),
                     hide_index=True, width="content")
    side_by_side(bundle, threshold_for(bundle, site), site, key="mc_sbs")
else:
    per_class = summary.get("per_class_auc") or {}
    cis = {c: v.get("auc_ci95") for c, v in evaluation.get("per_class", {}).items()}
    st.table(pd.DataFrame([{t("col_class"): c, t("col_auc"): F.fmt_num(a), t("col_ci"): F.fmt_ci(cis.get(c))}
                               for c, a in per_class.items()]), hide_index=True,
                 width="content")
    st.caption(t("performance_caption_per_class", n=fmt_int(summary.get("n")),
                 split=t.name("split", summary.get("split"))))

# --- calibration ----------------------------------------------------------------------------------------------------
calibration = manifest.get("calibration") or {}
if calibration:
    st.subheader(t("h_calibration"))
    method = str(calibration.get("method") or "")
    st.markdown(t("calibration_text", method=t.name("calibration", method.split(" ")[0]) if method else "—",
                  fitted_on=t.name("split", calibration.get("fitted_on")),
                  values=tables.calibration_text(calibration) or "—"))
    cal = (evaluation.get("ensemble") or {}).get("calibration")
    if cal:
        st.markdown(t("calibration_ece", before=F.fmt_num(cal.get("ece_before")),
                      after=F.fmt_num(cal.get("ece_after"))))

# --- operating points -----------------------------------------------------------------------------------------------
points = tables.operating_point_table(manifest, evaluation)
if len(points):
    st.subheader(t("h_operating_points"))
    st.markdown(t("operating_points_text", default=t.name("op", manifest.get("default_operating_point"))))
    st.table(pd.DataFrame({
        t("col_point"): points["name"].map(lambda n: t.name("op", n)),
        t("col_threshold"): points["threshold"].map(F.fmt_num),
        t("col_val_sens"): points["val_sensitivity"].map(F.fmt_pct),
        t("col_val_spec"): points["val_specificity"].map(F.fmt_pct),
        t("col_test_sens"): points["test_sensitivity"].map(F.fmt_pct),
        t("col_test_spec"): points["test_specificity"].map(F.fmt_pct),
    }), hide_index=True)
else:
    per_class_points = [p for p in manifest.get("operating_points", []) if p.get("thresholds")]
    if per_class_points:
        st.subheader(t("h_operating_points"))
        st.table(pd.DataFrame([{t("col_class"): c, t("col_threshold"): F.fmt_num(v)}
                                   for c, v in per_class_points[0]["thresholds"].items()]),
                     hide_index=True, width="content")

# --- limitations ----------------------------------------------------------------------------------------------------
st.header(t("h_limitations"))
limits = [per_dataset("lim_population", dataset, data=training.get("data", "?")),
          per_dataset("lim_view", dataset), t("lim_site"), per_dataset("lim_labels", dataset),
          t("lim_internal_test", n=fmt_int(summary.get("n")))]
if source and source["low_resolution"]:
    limits.append(t("lim_low_resolution", low=fmt_int(source["low_resolution"]), total=fmt_int(source["total"]),
                    side=source["low_resolution_side"]))
limits.append(t("lim_input", w=spec.get("width"), h=spec.get("height")))
limits.append(t("lim_calibration"))
if tables.is_small_training_set(manifest):
    limits.append(t("lim_small", n=fmt_int(training.get("counts", {}).get("train"))))
st.markdown("\n".join(f"- {item}" for item in limits))

# --- versions -------------------------------------------------------------------------------------------------------
st.header(t("h_versions"))
commit = str(training.get("code_commit") or "—")
st.markdown(t("versions_text", version=manifest.get("version", bundle.version), commit=commit,
              created=F.fmt_datetime(training.get("created")), hardware=tables.hardware_text(training.get("hardware")),
              wall=F.fmt_duration(training.get("wall_seconds"))))
if commit.endswith("-dirty"):
    st.caption(t("dirty_commit"))
versions = tables.version_table(manifest)
if len(versions):
    versions["train_seconds"] = versions["train_seconds"].map(F.fmt_duration)
    versions["params"] = versions["params"].map(F.fmt_int)
    versions["val_auc"] = versions["val_auc"].map(F.fmt_num)
    for column in ("temperature", "bias"):
        if column in versions:
            versions[column] = versions[column].map(lambda v: F.fmt_nums(v, 2))
    started = pd.DataFrame({t("col_model"): versions["name"],
                            t("col_initial_weights"): versions.pop("initial_weights").map(initial_weights_text)})
    st.table(versions.rename(columns={
        "name": t("col_model"), "arch": t("col_arch"), "params": t("col_params"), "epochs_run": t("col_epochs"),
        "val_auc": t("col_val_auc"), "temperature": t("col_temperature"), "bias": t("col_bias"),
        "train_seconds": t("col_train_time"),
        "code_commit": t("col_commit"), "sha256": t("col_sha")}), hide_index=True)
    st.markdown(t("initial_weights_text"))
    st.table(started, hide_index=True)

st.header(t("h_citation"))
st.markdown(per_dataset("citation", dataset, data=training.get("data", "?")))
