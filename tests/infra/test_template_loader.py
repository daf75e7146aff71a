"""template.yaml is read with libyaml's parser (10x faster) and must read exactly as PyYAML's pure-Python parser reads it."""

from __future__ import annotations

import yaml

from radstream import template


def _python_loader() -> type:
    class PythonCfnLoader(yaml.SafeLoader):
        pass

    for tag, constructor in template._CfnLoader.yaml_constructors.items():
        if tag and tag.startswith("!"):
            PythonCfnLoader.add_constructor(tag, constructor)
    return PythonCfnLoader


def test_the_fast_loader_is_libyamls_and_reads_the_template_as_the_python_parser_does():
    assert yaml.__with_libyaml__, "PyYAML without libyaml: the template would parse 10x slower"
    assert issubclass(template._CfnLoader, yaml.CSafeLoader)
    text = template.DEFAULT_TEMPLATE.read_text()
    assert yaml.load(text, Loader=template._CfnLoader) == yaml.load(text, Loader=_python_loader())


def test_short_form_tags_dates_and_block_scalars_read_the_same():
    text = """
Name: !Sub "${AWS::StackName}-x"
Arn: !GetAtt Queue.Arn
List: !Join [",", [!Ref A, !Select [0, !GetAZs ""]]]
Map: !If [IsProd, {a: 1}, !Ref "AWS::NoValue"]
Day: 2026-12-03
Text: |
  line one
    indented
Folded: >-
  a
  b
Numbers: [1, 1.5, 0x1F, .inf, null, ~, yes, "yes"]
"""
    fast = yaml.load(text, Loader=template._CfnLoader)
    assert fast == yaml.load(text, Loader=_python_loader())
    assert fast["Arn"] == {"Fn::GetAtt": ["Queue", "Arn"]} and fast["Name"] == {"Fn::Sub": "${AWS::StackName}-x"}
